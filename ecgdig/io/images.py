"""Safe image decoding and writing.

Scanned archives hold damaged files: truncated JPEGs, zero-byte files, PDFs renamed to ``.png`` and,
rarely, decompression bombs. :func:`read_image` turns each into one :class:`ImageInputError` naming
the file and the reason, before any large allocation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ecgdig.errors import ImageInputError
from ecgdig.io.atomic import atomic_path

__all__ = ["MAX_IMAGE_PIXELS", "MIN_IMAGE_SIDE_PX", "read_image", "write_image"]

#: Largest accepted image, in pixels: an A3 page at 600 dpi is about 70 Mpx.
MAX_IMAGE_PIXELS = 120_000_000
#: Smallest accepted side: below this no 1 mm grid can be resolved.
MIN_IMAGE_SIDE_PX = 200


def read_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as RGB ``uint8``, refusing anything unsafe or unusable.

    Parameters
    ----------
    path : str or Path
        PNG, JPEG, TIFF, BMP or any format Pillow reads. EXIF orientation is applied; alpha is
        composited on white (digital exports often have transparent paper).
    max_pixels : int, optional
        Refuse images with more pixels than this (decompression-bomb guard), checked from the header
        before decoding.

    Returns
    -------
    (rows, cols, 3) ndarray of uint8
        The RGB pixels.

    Raises
    ------
    ImageInputError
        If the file is missing, empty, not an image, truncated, too large or too small.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError("no such file", path)
    if path.stat().st_size == 0:
        raise ImageInputError("file is empty", path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at 2x errors) on bombs using its own global limit; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                cols, rows = img.size
                if rows * cols > max_pixels:
                    raise ImageInputError(
                        f"image is {cols}x{rows} = {rows * cols / 1e6:.0f} Mpx, above the "
                        f"{max_pixels / 1e6:.0f} Mpx limit (decompression bomb?)",
                        path,
                    )
                if min(rows, cols) < MIN_IMAGE_SIDE_PX:
                    raise ImageInputError(
                        f"image is only {cols}x{rows} px; an ECG page needs at least "
                        f"{MIN_IMAGE_SIDE_PX} px on each side",
                        path,
                    )
                img.load()
                rgb = _to_rgb(ImageOps.exif_transpose(img))
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise ImageInputError("image is too large to decode safely (decompression bomb?)", path) from None
    except UnidentifiedImageError:
        raise ImageInputError("not an image file (format not recognised)", path) from None
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason.lower():
            reason = "image file is truncated"
        raise ImageInputError(f"cannot decode image: {reason}", path) from None
    except (ValueError, SyntaxError) as exc:
        raise ImageInputError(f"cannot decode image: {exc}", path) from None
    return rgb


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in {"RGBA", "LA", "PA"} or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode in {"I", "I;16", "I;16B", "F"}:
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=2)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def write_image(path: str | Path, image: np.ndarray, *, jpeg_quality: int = 92) -> None:
    """Write an RGB or grey ``uint8`` image atomically; the format follows the suffix.

    Parameters
    ----------
    path : str or Path
        Target file (``.png``, ``.jpg``/``.jpeg``, ``.tif``...).
    image : (rows, cols[, 3]) ndarray of uint8
        Pixels.
    jpeg_quality : int, optional
        JPEG quality (1-95) when writing JPEG.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    pil = Image.fromarray(image)
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in {".jpg", ".jpeg"}:
            pil.save(tmp, format="JPEG", quality=int(jpeg_quality))
        else:
            pil.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
