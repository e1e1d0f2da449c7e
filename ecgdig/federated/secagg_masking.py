"""Fixed-point encoding mod 2^32 and AES-CTR masks for secure aggregation.

Pure functions on numpy arrays (no files): a site turns its weighted, clipped update into
integers mod 2^32 (:func:`encode_fixed_point`), adds its masks (:func:`mask_stream`); the
coordinator adds the masked inputs, removes the masks and decodes the sum
(:func:`decode_fixed_point`). ``uint32`` arithmetic wraps modulo 2^32 by itself, so sums of masks
cancel exactly.

Fixed point. A value ``v`` becomes ``floor(v 2^f + u) mod 2^32`` with ``u`` uniform in [0, 1)
(stochastic rounding: unbiased, error below one unit ``2^-f``). The design fixes
``f = 32 - 2 - ceil(log2 n) - ceil(log2 S)`` for ``n`` sites and clip norm ``S``. Every weight is at
most 1 and every coordinate of a clipped update at most ``S`` in magnitude, so each encoded value is
at most ``2^30 / n + 1`` and the sum of ``n`` of them at most ``2^30 + n < 2^31``: it never leaves the
signed 32-bit range, and reading the sum as ``int32`` recovers it exactly. Overflow is impossible,
not merely unlikely.

Masks. A mask is the AES-256-CTR keystream (zero IV) of a 32-byte key, read as little-endian
``uint32``; keys come from HKDF-SHA256 (RFC 5869) over a self-mask seed or an X25519 shared secret,
with the protocol context (federation, round, roster hash) in ``info``. Every key is used for one
keystream only, so the fixed IV never repeats under a key. Bonawitz et al. use a PRG for the same
purpose; AES-CTR is that PRG. No mask ever comes from a small seed or a non-cryptographic generator.

References
----------
.. [1] K. Bonawitz et al., "Practical secure aggregation for privacy-preserving machine learning",
   CCS 2017, Section 4 (masking with one-time pads, the PRG, pairwise masks).
.. [2] H. Krawczyk, P. Eronen, "HMAC-based extract-and-expand key derivation function (HKDF)",
   RFC 5869, 2010.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

__all__ = [
    "MODULUS_BITS",
    "decode_fixed_point",
    "derive_key",
    "encode_fixed_point",
    "flatten_tensors",
    "fractional_bits",
    "mask_stream",
    "pairwise_mask_key",
    "self_mask_key",
    "unflatten_tensors",
]

MODULUS_BITS = 32
"""Inputs and sums live in Z / 2^32, ``numpy.uint32``."""
_HEADROOM_BITS = 2  # a sign bit, and one spare bit for the +1 of stochastic rounding per site
_SELF_MASK_INFO = b"ecgdig secagg v1 self mask\x00"
_PAIR_MASK_INFO = b"ecgdig secagg v1 pairwise mask\x00"


def fractional_bits(n_sites: int, clip_norm: float) -> int:
    """Return ``f = 32 - 2 - ceil(log2 n) - ceil(log2 S)``, the fractional bits of the encoding.

    Parameters
    ----------
    n_sites : int
        ``n`` >= 1, the most inputs that can enter one sum (the sites in the roster).
    clip_norm : float
        ``S`` > 0, the clip bound: no coordinate of a weighted, clipped update exceeds it.

    Returns
    -------
    int
        ``f`` >= 1; the quantization step is ``2^-f``.

    Raises
    ------
    ValueError
        ``n`` < 1, ``S`` not positive, or so many sites and so large a bound that no fractional bit
        is left.

    Examples
    --------
    >>> fractional_bits(16, 1.0), fractional_bits(5, 10.0)
    (26, 23)
    """
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be finite and positive, got {clip_norm!r}")
    bits = MODULUS_BITS - _HEADROOM_BITS - math.ceil(math.log2(n_sites)) - math.ceil(math.log2(clip_norm))
    if bits < 1:
        raise ValueError(
            f"{n_sites} sites with clip norm {clip_norm} leave no fractional bit in 32-bit fixed point"
        )
    return bits


_Scalar = TypeVar("_Scalar", bound=np.generic)


def flatten_tensors(tensors: Mapping[str, NDArray[np.generic]], dtype: type[_Scalar]) -> NDArray[_Scalar]:
    """Concatenate tensors in sorted name order into one flat array of ``dtype``.

    Parameters
    ----------
    tensors : mapping of str to ndarray
        The tensors.
    dtype : numpy dtype
        The flat array's dtype.

    Returns
    -------
    ndarray
        1-D, length the total number of elements.

    Examples
    --------
    >>> import numpy as np
    >>> flatten_tensors({"b": np.ones(2), "a": np.zeros((1, 1))}, np.float64).tolist()
    [0.0, 1.0, 1.0]
    """
    if not tensors:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(tensors[name], dtype=dtype).ravel() for name in sorted(tensors)])


def unflatten_tensors(
    flat: NDArray[np.generic], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, NDArray[np.generic]]:
    """Split a flat array back into tensors (inverse of :func:`flatten_tensors`).

    Parameters
    ----------
    flat : ndarray
        1-D, length the total number of elements of ``shapes``.
    shapes : mapping of str to tuple of int
        Tensor names and shapes.

    Returns
    -------
    dict of str to ndarray
        Contiguous copies, in sorted name order.

    Raises
    ------
    ValueError
        The lengths disagree.
    """
    total = sum(math.prod(shape) for shape in shapes.values())
    if flat.ndim != 1 or flat.size != total:
        raise ValueError(f"flat array has {flat.size} elements, the shapes need {total}")
    out: dict[str, NDArray[np.generic]] = {}
    start = 0
    for name in sorted(shapes):
        size = math.prod(shapes[name])
        out[name] = np.ascontiguousarray(flat[start : start + size].reshape(shapes[name]))
        start += size
    return out


def encode_fixed_point(
    values: NDArray[np.floating], frac_bits: int, bound: float, rng: np.random.Generator
) -> NDArray[np.uint32]:
    """Encode reals as ``floor(v 2^f + u) mod 2^32`` with stochastic rounding.

    Parameters
    ----------
    values : ndarray of float
        The weighted, clipped update (any shape), ``|v| <= bound``.
    frac_bits : int
        ``f`` from :func:`fractional_bits`.
    bound : float
        The largest magnitude the encoding was sized for (the clip norm ``S``); a tiny float
        tolerance (1e-6 relative) absorbs float32 rounding of a correctly clipped update.
    rng : numpy.random.Generator
        Source of the rounding offsets ``u``. Rounding randomness needs no secrecy for the masks'
        security, but the caller should seed it from the OS (:func:`ecgdig.federated.privacy.make_rng`).

    Returns
    -------
    ndarray of uint32
        Same shape as ``values``.

    Raises
    ------
    ValueError
        A value is not finite or exceeds ``bound``: encoding it could overflow the sum.

    Examples
    --------
    >>> import numpy as np
    >>> encode_fixed_point(np.array([1.0, -1.0]), 4, 1.0, np.random.default_rng(0)).tolist()
    [16, 4294967280]
    """
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError("cannot encode NaN or Inf")
    largest = float(np.abs(array).max()) if array.size else 0.0
    if largest > bound * (1.0 + 1e-6):
        raise ValueError(
            f"value {largest:.6g} exceeds the encoding bound {bound:.6g}: the sum could overflow"
        )
    scaled = np.floor(np.ldexp(array, frac_bits) + rng.random(array.shape))
    # int64 holds the scaled values (|.| < 2^31), and % maps negatives to their residue mod 2^32.
    return (scaled.astype(np.int64) % (1 << MODULUS_BITS)).astype(np.uint32)


def decode_fixed_point(total: NDArray[np.uint32], frac_bits: int) -> NDArray[np.float64]:
    """Decode a sum mod 2^32 back to reals: read it as two's-complement ``int32``, divide by ``2^f``.

    Parameters
    ----------
    total : ndarray of uint32
        The unmasked sum of encoded inputs.
    frac_bits : int
        ``f`` used to encode them.

    Returns
    -------
    ndarray of float64
        The sum, exact up to the quantization error (below ``n 2^-f`` for ``n`` inputs).

    Examples
    --------
    >>> import numpy as np
    >>> decode_fixed_point(np.array([16, 4294967280], dtype=np.uint32), 4).tolist()
    [1.0, -1.0]
    """
    signed = np.asarray(total, dtype=np.uint32).view(np.int32)
    return np.ldexp(signed.astype(np.float64), -frac_bits)


def derive_key(secret: bytes, info: bytes) -> bytes:
    """Return a 32-byte key ``HKDF-SHA256(secret, salt=None, info)`` (RFC 5869).

    Parameters
    ----------
    secret : bytes
        Input keying material (a seed or an X25519 shared secret).
    info : bytes
        Context: what the key is for and which protocol run it belongs to.

    Returns
    -------
    bytes
        32 bytes.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def mask_stream(key: bytes, count: int) -> NDArray[np.uint32]:
    """Return ``count`` pseudo-random ``uint32`` values: the AES-256-CTR keystream of ``key``.

    Parameters
    ----------
    key : bytes
        32 bytes, used for this one keystream only (so the zero IV never repeats under it).
    count : int
        Number of values.

    Returns
    -------
    ndarray of uint32
        Read-only, little-endian.

    Examples
    --------
    >>> a, b = mask_stream(bytes(32), 4), mask_stream(bytes(32), 4)
    >>> bool((a == b).all()), a.dtype.name
    (True, 'uint32')
    """
    if len(key) != 32:
        raise ValueError("a mask key is 32 bytes")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    keystream = encryptor.update(bytes(4 * count)) + encryptor.finalize()
    return np.frombuffer(keystream, dtype="<u4")


def self_mask_key(seed: bytes, context: bytes) -> bytes:
    """Return the key of a site's self mask ``b_u`` from its 32-byte seed.

    Parameters
    ----------
    seed : bytes
        The self-mask seed (Shamir-shared among the sites).
    context : bytes
        The protocol run (federation, round, roster hash), so a seed never yields the same mask twice.

    Returns
    -------
    bytes
        32-byte AES key.
    """
    return derive_key(seed, _SELF_MASK_INFO + context)


def pairwise_mask_key(
    private_key: X25519PrivateKey, peer_public_key: bytes, context: bytes, pair: Sequence[str]
) -> bytes:
    """Return the key of the pairwise mask ``p_{u,v}`` shared by two sites (X25519 + HKDF).

    Both sites, and the coordinator once it has rebuilt a dropped site's private key, derive the
    same key: the X25519 shared secret is symmetric and the pair is put in sorted order.

    Parameters
    ----------
    private_key : X25519PrivateKey
        One site's mask private key.
    peer_public_key : bytes
        The other site's raw 32-byte mask public key.
    context : bytes
        The protocol run (federation, round, roster hash).
    pair : sequence of str
        The two site ids (any order).

    Returns
    -------
    bytes
        32-byte AES key.
    """
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
    first, second = sorted(pair)
    label = f"{first}\x00{second}".encode()
    return derive_key(shared, _PAIR_MASK_INFO + context + b"\x00" + label)
