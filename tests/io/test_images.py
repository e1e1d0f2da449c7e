from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecgdig.errors import ImageInputError
from ecgdig.io import read_image, write_image


def _png_header_only(path: Path, cols: int, rows: int) -> None:
    """A PNG whose header claims a huge size (a decompression bomb), with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_round_trip_rgb(tmp_path: Path) -> None:
    image = np.random.default_rng(1).integers(0, 255, size=(300, 400, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    assert np.array_equal(read_image(tmp_path / "a.png"), image)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((250, 250, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert np.all(read_image(tmp_path / "t.png") == 255)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_bytes(b"%PDF-1.4 not an image at all" * 10), "not an image file"),
        (lambda p: _png_header_only(p, 20000, 20000), "decompression bomb"),
    ],
)
def test_bad_files_give_one_line_naming_the_file(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "page.png"
    make(path)
    with pytest.raises(ImageInputError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message


def test_truncated_jpeg(tmp_path: Path) -> None:
    image = np.random.default_rng(2).integers(0, 255, size=(400, 400, 3), dtype=np.uint8)
    write_image(tmp_path / "full.jpg", image)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageInputError, match=r"cut\.jpg: cannot decode image: image file is truncated"):
        read_image(tmp_path / "cut.jpg")


def test_tiny_image_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (50, 40), "white").save(tmp_path / "tiny.png")
    with pytest.raises(ImageInputError, match="only 50x40 px"):
        read_image(tmp_path / "tiny.png")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="no such file"):
        read_image(tmp_path / "absent.png")
