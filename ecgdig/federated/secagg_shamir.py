"""Shamir secret sharing over the Mersenne prime field GF(2^521 - 1).

Secure aggregation (Bonawitz et al. 2017, Section 4, "SS.share" and "SS.recon") shares two
256-bit secrets of every site, its self-mask seed and its mask private key, so that any ``t`` of the
``n`` sites can rebuild them and fewer than ``t`` learn nothing. A secret is an integer below
:data:`PRIME`; a share is a point ``(x, f(x))`` of a random polynomial ``f`` of degree ``t - 1``
with ``f(0)`` the secret. Any ``t - 1`` shares are consistent with every possible secret, so they
reveal nothing about it (perfect secrecy).

The field is much larger than the secrets (521 > 256 bits), so every 32-byte secret is a field
element as it is, with no reduction and no bias. Coefficients come from :mod:`secrets`.

References
----------
.. [1] A. Shamir, "How to share a secret", Communications of the ACM 22(11), 1979.
.. [2] K. Bonawitz et al., "Practical secure aggregation for privacy-preserving machine learning",
   CCS 2017, Section 4.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

__all__ = ["PRIME", "SHARE_BYTES", "reconstruct_secret", "split_secret"]

PRIME = 2**521 - 1
"""The field modulus, the Mersenne prime M521."""
SHARE_BYTES = 66
"""Bytes of a share value written big-endian (521 bits fit in 66 bytes)."""


def split_secret(secret: int, xs: Sequence[int], threshold: int) -> dict[int, int]:
    """Split ``secret`` into one share per x-coordinate, any ``threshold`` of which rebuild it.

    Parameters
    ----------
    secret : int
        The secret, ``0 <= secret < PRIME``.
    xs : sequence of int
        Distinct x-coordinates in ``[1, PRIME)``, one per recipient (never 0: ``f(0)`` is the secret).
    threshold : int
        ``t``, with ``1 <= t <= len(xs)``: the degree of the polynomial is ``t - 1``.

    Returns
    -------
    dict of int to int
        x -> ``f(x)``.

    Raises
    ------
    ValueError
        A secret outside the field, repeated or out-of-range coordinates, or a threshold out of range.

    Examples
    --------
    >>> shares = split_secret(42, [1, 2, 3], 2)
    >>> reconstruct_secret({1: shares[1], 3: shares[3]}, 2)
    42
    """
    if not 0 <= secret < PRIME:
        raise ValueError("the secret must be a field element (0 <= secret < 2^521 - 1)")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ValueError("share x-coordinates must be distinct and in [1, 2^521 - 1)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares: dict[int, int] = {}
    for x in xs:
        value = 0
        for coefficient in reversed(coefficients):  # Horner's rule
            value = (value * x + coefficient) % PRIME
        shares[x] = value
    return shares


def reconstruct_secret(shares: Mapping[int, int], threshold: int) -> int:
    """Rebuild the secret from at least ``threshold`` shares by Lagrange interpolation at 0.

    Only the first ``threshold`` shares (in x order) are used; which ones does not matter when all
    are genuine.

    Parameters
    ----------
    shares : mapping of int to int
        x -> ``f(x)``, field elements with distinct non-zero x.
    threshold : int
        ``t`` the secret was split with.

    Returns
    -------
    int
        ``f(0)``.

    Raises
    ------
    ValueError
        Fewer than ``threshold`` shares (they determine nothing about the secret), or values outside
        the field.

    Examples
    --------
    >>> shares = split_secret(7, [1, 2, 3, 4], 3)
    >>> reconstruct_secret(shares, 3)
    7
    """
    if threshold < 1 or len(shares) < threshold:
        raise ValueError(
            f"{len(shares)} share(s) given, {threshold} needed: fewer reveal nothing about the secret"
        )
    points = sorted(shares.items())[:threshold]
    if not all(0 < x < PRIME and 0 <= y < PRIME for x, y in points):
        raise ValueError("shares must be field elements with non-zero x")
    secret = 0
    for i, (x_i, y_i) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(points):
            if i != j:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        secret = (secret + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    return secret
