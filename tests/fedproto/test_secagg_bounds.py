"""The sum of K quantised + noised + masked packed vectors never wraps mod t within the planned
bounds, and parameters that would allow a wrap are refused with a clear error."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedproto.dp import DiscreteGaussianTable, plan_distributed_noise
from fedproto.secagg import PackingBounds, SecAggError, add_mod, offset_values, pack, plan_packing, sum_mod, unpack_sum
from fedproto.secagg.masking import correction, mask_vector

T60 = 1152921504606830593


def test_the_default_modulus_is_the_bfv_codecs_plain_modulus():
    from fedproto.codec.bfv_packed import PLAIN_MODULUS

    assert PLAIN_MODULUS == T60


@st.composite
def packed_rounds(draw):
    modulus = draw(st.sampled_from([T60, (1 << 62) - 1, 65537, 1 << 40]))
    k_max = draw(st.integers(1, 12))
    room = (modulus - 1) // (2 * k_max)  # K * 2 (G + M) < t: the widest one value per slot allows
    g = draw(st.integers(0, min(5000, room)))
    m = draw(st.integers(0, min(5000, room - g)))
    bounds = plan_packing(modulus, k_max, g, m)
    k = draw(st.integers(1, k_max))
    n = draw(st.integers(1, 30))
    worst = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 32))
    return bounds, k, n, worst, seed


@given(packed_rounds())
@settings(max_examples=150, deadline=None)
def test_the_masked_sum_of_noised_packed_vectors_never_wraps(case):
    bounds, k, n, worst, seed = case
    rng = np.random.default_rng(seed)
    g, m = bounds.sum_clip, bounds.noise_bound
    if worst:  # every contributor at the top (or bottom) of every coordinate
        side = rng.choice([-1, 1])
        grads = [np.full(n, side * (g + 7), dtype=np.int64) for _ in range(k)]
        noise = [np.full(n, side * m, dtype=np.int64) for _ in range(k)]
    else:
        grads = [rng.integers(-3 * g - 1, 3 * g + 2, n) for _ in range(k)]
        noise = [rng.integers(-m, m + 1, n) for _ in range(k)]
    values = [offset_values(gr, z, bounds) for gr, z in zip(grads, noise)]
    slots = [pack(v, bounds) for v in values]
    n_slots = bounds.n_slots(n)
    exact = [sum(int(s[j]) for s in slots) for j in range(n_slots)]
    assert max(exact) <= bounds.worst_slot_sum() < bounds.modulus  # the integer sum itself is below t
    # Mask every vector (self masks + pairwise masks over all pairs), sum mod t, remove the masks.
    ids = list(range(1, k + 1))
    pair = {(a, b): os.urandom(32) for a in ids for b in ids if a < b}
    selfs = {a: os.urandom(32) for a in ids}
    masked = [mask_vector(s, n_slots, a, selfs[a], {b: pair[min(a, b), max(a, b)] for b in ids if b != a}, bounds.modulus)
              for a, s in zip(ids, slots)]
    total = add_mod(sum_mod(masked, n_slots, bounds.modulus), correction(n_slots, bounds.modulus, selfs.values(), []),
                    bounds.modulus)
    assert [int(x) for x in total] == exact
    decoded = unpack_sum(total, n, k, bounds)
    expected = sum(np.clip(gr, -g, g) + z for gr, z in zip(grads, noise))
    assert np.array_equal(decoded, expected)


def test_worst_case_slots_of_max_contributors_fit_exactly():
    b = plan_packing(T60, 200, 2047, 0)  # the codec's default: 200 hospitals, values up to 4094
    assert (b.digit_bits, b.digits_per_slot) == (20, 3)
    top = pack(np.full(3, b.value_max, dtype=np.int64), b)
    assert int(top[0]) * 200 == b.worst_slot_sum() < T60


def test_parameters_that_allow_a_wrap_are_refused():
    with pytest.raises(SecAggError, match="wrap mod"):  # 2 digits of 20 bits, but t < 2^40
        plan_packing(10 ** 12, 1, 1 << 18, (1 << 18) - 1, digits_per_slot=2)
    assert plan_packing(10 ** 12, 1, 1 << 18, (1 << 18) - 1).digits_per_slot == 1
    with pytest.raises(SecAggError, match="even one value per slot"):
        plan_packing(65537, 100, 200, 200)
    with pytest.raises(SecAggError, match=r"digit sum can reach"):
        PackingBounds(T60, 10, 100, 100, 10, 2).check()  # 10 * 400 = 4000 >= 2^10: a carry
    with pytest.raises(SecAggError, match="64-bit slot"):
        PackingBounds((1 << 62) - 1, 1, 0, 1, 2, 33).check()
    b = plan_packing(T60, 5, 10, 3)
    with pytest.raises(SecAggError, match="noise share exceeds"):
        offset_values(np.zeros(2, dtype=np.int64), np.array([0, 4]), b)
    with pytest.raises(SecAggError, match=r"lie in \[0, 26\]"):
        pack(np.array([27]), b)
    with pytest.raises(SecAggError, match="exceed the 5"):
        unpack_sum(np.zeros(1, dtype=np.uint64), 2, 6, b)
    with pytest.raises(SecAggError, match="integer arrays"):
        offset_values(np.zeros(2), np.zeros(2, dtype=np.int64), b)


def test_a_planned_study_packs_its_noise_without_wrapping():
    """The bound M of the table sampler of a real noise plan feeds the packing: two values per
    slot for 20 hospitals, and a full round of sampled noise + clamped gradients decodes exactly."""
    plan = plan_distributed_noise(target_epsilon=4.0, delta=1e-5, clip=1.0, gamma=1e-3, dim=5000, rounds=50,
                                  n_hospitals=20, quorum=15, collusion=3)
    table = DiscreteGaussianTable(plan.local_sigma2)
    assert table.half_width == plan.noise_bound
    b = plan_packing(T60, 20, 20 * 1000, plan.noise_bound)
    assert b.digits_per_slot == 2
    rng = np.random.default_rng(3)
    grads = [rng.integers(-30_000, 30_000, 5000) for _ in range(20)]
    noise = [table.sample(5000, rng.bytes) for _ in range(20)]
    total = sum_mod([pack(offset_values(gr, z, b), b) for gr, z in zip(grads, noise)], b.n_slots(5000), T60)
    assert np.array_equal(unpack_sum(total, 5000, 20, b), sum(np.clip(gr, -20_000, 20_000) + z for gr, z in zip(grads, noise)))
    assert Fraction(plan.local_sigma) ** 2 == table.sigma2
