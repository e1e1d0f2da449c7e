"""Shamir sharing, fixed-point encoding and AES-CTR masks of secure aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ecgdig.federated.secagg import default_threshold
from ecgdig.federated.secagg_masking import (
    decode_fixed_point,
    encode_fixed_point,
    fractional_bits,
    mask_stream,
    pairwise_mask_key,
    self_mask_key,
)
from ecgdig.federated.secagg_shamir import PRIME, reconstruct_secret, split_secret


def _lagrange_at_zero(points: dict[int, int]) -> int:
    """Interpolate without the threshold check (what a coordinator with too few shares could do)."""
    total = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num, den = num * xj % PRIME, den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def test_shamir_any_t_shares_rebuild_the_secret() -> None:
    # Prepare
    secret = int.from_bytes(bytes(range(32)), "big")
    shares = split_secret(secret, [1, 2, 3, 4, 5], 3)
    # Execute / Assert: every 3-subset gives the secret
    for subset in ([1, 2, 3], [1, 4, 5], [2, 3, 5], [3, 4, 5]):
        assert reconstruct_secret({x: shares[x] for x in subset}, 3) == secret


def test_shamir_hand_checked_line() -> None:
    # Prepare: f(x) = 42 + 5x has f(1) = 47, f(2) = 52
    # Execute / Assert
    assert reconstruct_secret({1: 47, 2: 52}, 2) == 42
    assert reconstruct_secret({2: 52, 5: 67}, 2) == 42


def test_fewer_than_t_shares_reveal_nothing() -> None:
    # Prepare: t = 3, the coordinator holds only 2 shares
    secret = 123456789
    shares = split_secret(secret, [1, 2, 3, 4], 3)
    two = {1: shares[1], 2: shares[2]}
    # Execute / Assert: reconstruction refuses; interpolating anyway does not give the secret
    with pytest.raises(ValueError, match="2 share\\(s\\) given, 3 needed"):
        reconstruct_secret(two, 3)
    assert _lagrange_at_zero(two) != secret
    # ... and every candidate secret is equally consistent with the two shares: the degree-2
    # polynomial through (0, s'), (1, y1), (2, y2) exists for any s' (perfect secrecy).
    for candidate in (0, 1, secret, PRIME - 1):
        points = {**two}
        f = {0: candidate, **points}

        def at(x: int, pts: dict[int, int] = f) -> int:
            value = 0
            for xi, yi in pts.items():
                num, den = 1, 1
                for xj in pts:
                    if xj != xi:
                        num, den = num * (x - xj) % PRIME, den * (xi - xj) % PRIME
                value = (value + yi * num * pow(den, -1, PRIME)) % PRIME
            return value

        assert at(1) == shares[1] and at(2) == shares[2] and at(0) == candidate


def test_shamir_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="distinct"):
        split_secret(1, [1, 1, 2], 2)
    with pytest.raises(ValueError, match="threshold"):
        split_secret(1, [1, 2], 3)
    with pytest.raises(ValueError, match="field element"):
        split_secret(PRIME, [1, 2], 2)


@pytest.mark.parametrize(("n", "t"), [(2, 2), (3, 3), (4, 3), (5, 4), (16, 11), (64, 43)])
def test_default_threshold(n: int, t: int) -> None:
    assert default_threshold(n) == t


@pytest.mark.parametrize(("n", "clip", "bits"), [(3, 1.0, 28), (16, 1.0, 26), (64, 10.0, 20), (4, 0.25, 30)])
def test_fractional_bits_follow_the_design_formula(n: int, clip: float, bits: int) -> None:
    # f = 32 - 2 - ceil(log2 n) - ceil(log2 S)
    assert fractional_bits(n, clip) == bits


def test_fixed_point_hand_values_and_round_trip() -> None:
    # Prepare: f = 4 (unit 1/16); 0.5 and -0.25 are exact, so rounding cannot move them
    rng = np.random.default_rng(0)
    values = np.array([0.5, -0.25, 0.0])
    # Execute
    encoded = encode_fixed_point(values, 4, 1.0, rng)
    # Assert: 0.5 * 16 = 8; -0.25 * 16 = -4 = 2^32 - 4
    assert encoded.tolist() == [8, 2**32 - 4, 0]
    assert decode_fixed_point(encoded, 4).tolist() == [0.5, -0.25, 0.0]


def test_stochastic_rounding_is_unbiased() -> None:
    # Prepare: 0.3 lies between 4/16 and 5/16, at 80 % of the way
    values = np.full(100_000, 0.3)
    # Execute
    decoded = decode_fixed_point(encode_fixed_point(values, 4, 1.0, np.random.default_rng(1)), 4)
    # Assert: only the two neighbours occur, in proportion, so the mean is 0.3
    assert set(np.unique(decoded).tolist()) == {0.25, 0.3125}
    assert abs(decoded.mean() - 0.3) < 1e-3


def test_worst_case_sum_cannot_overflow() -> None:
    # Prepare: n = 5 sites, S = 1, every coordinate at +S or -S (the largest clipped values)
    n, clip = 5, 1.0
    bits = fractional_bits(n, clip)
    rng = np.random.default_rng(2)
    for sign in (1.0, -1.0):
        total = np.zeros(3, dtype=np.uint32)
        for _ in range(n):
            total += encode_fixed_point(np.full(3, sign * clip), bits, clip, rng)
        # Execute / Assert: the decoded sum is n * S exactly (S * 2^f is an integer)
        assert decode_fixed_point(total, bits).tolist() == [sign * n * clip] * 3


def test_encoding_refuses_values_beyond_the_bound() -> None:
    with pytest.raises(ValueError, match="exceeds the encoding bound"):
        encode_fixed_point(np.array([1.01]), 20, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN"):
        encode_fixed_point(np.array([np.nan]), 20, 1.0, np.random.default_rng(0))


def test_masks_are_keyed_and_pairwise_masks_cancel() -> None:
    # Prepare: two sites with X25519 mask keys
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    pub_a = a.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pub_b = b.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    context = b"fed|round 0|roster"
    # Execute: each derives the pair key from its own private and the other's public key
    key_ab = pairwise_mask_key(a, pub_b, context, ("site-a", "site-b"))
    key_ba = pairwise_mask_key(b, pub_a, context, ("site-b", "site-a"))
    x_a = np.array([1, 2, 3], dtype=np.uint32)
    x_b = np.array([10, 20, 2**32 - 1], dtype=np.uint32)
    y_a = x_a + mask_stream(key_ab, 3)
    y_b = x_b - mask_stream(key_ba, 3)
    # Assert: the same key, the masks cancel in the sum (mod 2^32), and another context or seed
    # gives another mask
    assert key_ab == key_ba
    assert (y_a + y_b).tolist() == [11, 22, 2]
    assert not np.array_equal(
        mask_stream(key_ab, 3), mask_stream(pairwise_mask_key(a, pub_b, b"x", ("a", "b")), 3)
    )
    seed = bytes(32)
    assert not np.array_equal(
        mask_stream(self_mask_key(seed, b"r1"), 8), mask_stream(self_mask_key(seed, b"r2"), 8)
    )


def test_one_masked_vector_is_uniform_bytes() -> None:
    # Prepare: a constant update (its bytes take 4 values) under a self mask and one pairwise mask
    from scipy.stats import chisquare

    encoded = encode_fixed_point(np.full(50_000, 0.5), 20, 1.0, np.random.default_rng(0))
    masked = encoded + mask_stream(bytes(range(32)), encoded.size) + mask_stream(bytes(32), encoded.size)
    # Execute
    counts_masked = np.bincount(np.frombuffer(masked.tobytes(), dtype=np.uint8), minlength=256)
    counts_plain = np.bincount(np.frombuffer(encoded.tobytes(), dtype=np.uint8), minlength=256)
    # Assert
    assert chisquare(counts_masked).pvalue > 1e-4
    assert chisquare(counts_plain).pvalue < 1e-12
