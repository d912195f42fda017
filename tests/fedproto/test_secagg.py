"""Secure aggregation primitives (fedproto.secagg): PRG, key derivation, Shamir, and the
uniformity of a single masked upload. Real PyNaCl X25519, AES-256-CTR, GF(2^521 - 1); randomness is
seeded where a statistic must be reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from scipy.stats import chisquare
from secagg_support import T60, Round, make_setup, uniformity

from fedproto.secagg import SecAggError, expand_uniform, shamir
from fedproto.secagg.kdf import derive_seed, encode_fields, pairwise_seed, x25519
from fedproto.secagg.masking import add_signed_mask, signed_mask_sum
from fedproto.secagg.prg import acceptance, keystream, value_shift


def test_a_single_masked_upload_is_uniform_and_an_unmasked_one_is_not():
    n = 50_000
    setup = make_setup([2, 7, 9], n=n)
    update = np.random.default_rng(5).integers(0, 1 << 20, n, dtype=np.uint64)  # small packed digits
    r = Round(setup, seed=11)  # seeded keys and shares: the same masked vector every run
    ups = r.run([2, 7, 9], [2, 7, 9], [2, 7, 9], {h: update for h in (2, 7, 9)})
    p_bins, p_low, repeats = uniformity(ups[7], T60)
    assert p_bins > 1e-3 and p_low > 1e-3 and repeats == 0
    # The same statistics reject the update itself, and the update spread evenly over [0, t)
    # (which fools the coarse bins and the low byte but not the repeat count).
    assert uniformity(update, T60)[0] < 1e-100
    spread = update * np.uint64(T60 >> 20)
    p_bins, p_low, repeats = uniformity(spread, T60)
    assert p_bins > 1e-3 and p_low > 1e-3 and repeats > 500


# ------------------------------------------------------------------ PRG
def test_prg_is_deterministic_prefix_stable_and_in_range():
    seed = bytes(range(32))
    a = expand_uniform(seed, 1000, T60)
    assert a.dtype == np.uint64 and int(a.max()) < T60
    assert np.array_equal(expand_uniform(seed, 1000, T60), a)
    assert np.array_equal(expand_uniform(seed, 17, T60), a[:17])
    assert not np.array_equal(expand_uniform(bytes(32), 1000, T60), a)
    assert expand_uniform(seed, 0, T60).shape == (0,)


def test_prg_rejection_sampling_is_unbiased_where_plain_modulo_is_not():
    t = 3 << 60  # 2^64 mod t = 2^60: a naive `word % t` puts 6/16 of its mass on [0, t/3)
    assert value_shift(t) == 2 and acceptance(t) == 0.75  # candidates on [0, 2^62), a quarter rejected
    n = 30_000
    values = np.concatenate([expand_uniform(bytes([i]) * 32, n // 30, t) for i in range(30)])
    assert int(values.max()) < t
    thirds = np.bincount((values // np.uint64(1 << 60)).astype(np.int64), minlength=3)
    assert chisquare(thirds).pvalue > 1e-3
    words = np.random.default_rng(1).integers(0, 1 << 64, n, dtype=np.uint64, endpoint=False)
    naive = np.bincount(((words % np.uint64(t)) // np.uint64(1 << 60)).astype(np.int64), minlength=3)
    assert chisquare(naive).pvalue < 1e-30


def test_prg_output_is_the_accepted_values_of_the_keystream_in_order():
    """Where a quarter of the words are rejected the PRG reads on into the same stream: its output
    is exactly the accepted candidates of the AES-CTR keystream, in order, for any length."""
    t, seed = 3 << 60, bytes(range(1, 33))
    words = np.frombuffer(keystream(seed).update(bytes(8 * 4000)), dtype="<u8") >> np.uint64(2)
    accepted = words[words < np.uint64(t)]
    assert accepted.size < 3100  # about 3000 of 4000 accepted
    for n in (1, 999, 1000, 2500, accepted.size):
        assert np.array_equal(expand_uniform(seed, n, t), accepted[:n])
    assert expand_uniform(seed, 6000, t).size == 6000  # beyond the first read


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 3, 251, (1 << 61) + 1, T60, (1 << 62) - 57]), st.lists(st.sampled_from([1, -1]), max_size=40),
       st.integers(0, 2 ** 32))
def test_fused_mask_sum_equals_adding_the_masks_one_by_one(t, signs, salt):
    """signed_mask_sum (lazy reduction, as many terms as fit in uint64) equals chaining add_mod /
    sub_mod per mask, for moduli that allow 3 (near 2^62) up to 2^63 terms before a reduction."""
    n = 300
    start = expand_uniform(salt.to_bytes(32, "big"), n, t)
    seeds = [(salt + 1 + i).to_bytes(32, "big") for i in range(len(signs))]
    chained = start
    for seed, sign in zip(seeds, signs):
        chained = add_signed_mask(chained, seed, sign, t)
    fused = signed_mask_sum(n, t, list(zip(seeds, signs)), start=start)
    assert fused.dtype == np.uint64 and np.array_equal(fused, chained)


def test_prg_rejects_bad_arguments():
    for bad in (b"short", "x" * 32):
        with pytest.raises(SecAggError, match="seed"):
            expand_uniform(bad, 3, T60)  # type: ignore[arg-type]
    for t in (1, 1 << 62, 2.5):
        with pytest.raises(SecAggError, match="modulus"):
            expand_uniform(bytes(32), 3, t)  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="length"):
        expand_uniform(bytes(32), -1, T60)


def test_uniform_over_many_seeds_at_one_coordinate():
    first = np.array([expand_uniform(i.to_bytes(32, "big"), 1, 251)[0] for i in range(20_000)])
    assert chisquare(np.bincount(first.astype(np.int64), minlength=251)).pvalue > 1e-3


# ------------------------------------------------------------------ key derivation
def test_pairwise_seeds_agree_and_are_domain_separated():
    a, b = PrivateKey(bytes([1]) * 32), PrivateKey(bytes([2]) * 32)
    pa, pb = bytes(a.public_key), bytes(b.public_key)
    s_ab = pairwise_seed(bytes(a), pa, pb, "s", 1, 10, 20)
    assert s_ab == pairwise_seed(bytes(b), pb, pa, "s", 1, 20, 10)
    assert s_ab != pairwise_seed(bytes(a), pa, pb, "s", 2, 10, 20)  # other round
    assert s_ab != pairwise_seed(bytes(a), pa, pb, "t", 1, 10, 20)  # other study
    assert s_ab != pairwise_seed(bytes(a), pa, pb, "s", 1, 10, 21)  # other pair
    shared = x25519(bytes(a), pb)
    assert derive_seed(shared, "self-mask", "s", 1) != derive_seed(shared, "pairwise-mask", "s", 1)
    assert encode_fields("ab", "c") != encode_fields("a", "bc") and encode_fields(1) != encode_fields("1")
    with pytest.raises(SecAggError, match="itself"):
        pairwise_seed(bytes(a), pa, pb, "s", 1, 10, 10)
    with pytest.raises(SecAggError, match="low-order"):
        x25519(bytes(a), bytes(32))


# ------------------------------------------------------------------ Shamir
@given(st.integers(1, 8), st.data())
@settings(max_examples=40, deadline=None)
def test_shamir_reconstructs_from_any_threshold_subset_and_refuses_below(threshold, data):
    n = data.draw(st.integers(threshold, 10))
    xs = sorted(data.draw(st.sets(st.integers(1, 10 ** 9), min_size=n, max_size=n)))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = shamir.split(secret, xs, threshold)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=threshold, max_size=n, unique=True))
    assert shamir.reconstruct({x: shares[x] for x in subset}, threshold) == secret
    if threshold > 1:
        few = subset[: threshold - 1]
        with pytest.raises(SecAggError, match="cannot reconstruct"):
            shamir.reconstruct({x: shares[x] for x in few}, threshold)


def test_shamir_below_threshold_says_nothing_and_wrong_shares_are_detected():
    xs, secret = [4, 8, 15, 16, 23], bytes(range(32))
    shares = shamir.split(secret, xs, 3)
    # Two shares plus ANY candidate secret at x = 0 fit a degree-2 polynomial: pretending the
    # threshold were 2 gives a field element unrelated to the secret (almost surely not even 32 bytes).
    try:
        guess: bytes | None = shamir.reconstruct({4: shares[4], 8: shares[8]}, 2)
    except SecAggError as exc:
        assert "not a 32-byte secret" in str(exc)
        guess = None
    assert guess != secret
    bad = dict(shares)
    bad[23] = (bad[23] + 1) % shamir.PRIME
    with pytest.raises(SecAggError, match="inconsistent"):
        shamir.reconstruct(bad, 3)
    with pytest.raises(SecAggError, match="distinct|positive"):
        shamir.split(secret, [0, 1, 2], 2)
    with pytest.raises(SecAggError, match="threshold"):
        shamir.split(secret, [1, 2], 3)
    assert shamir.share_from_hex(shamir.share_to_hex(shares[4])) == shares[4]
