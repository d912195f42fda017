"""Distributed DP (fedproto.dp): the exact and the table discrete Gaussian samplers, conditional
rounding, and the distributed discrete Gaussian accounting against the authors' reference code."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import chisquare, norm

from fedproto.dp import (
    BETA_DEFAULT,
    DiscreteGaussianTable,
    conditional_round,
    ddg_epsilon,
    ddg_tau,
    local_sigma_for_epsilon,
    plan_distributed_noise,
    rdp_to_epsilon,
    rounded_l1_bound,
    rounded_l2_bound,
    rounded_record_sum,
    sample_discrete_gaussian,
)
from fedproto.dp.dgauss_table import count_le_128
from fedproto.dp.discrete_gaussian import bernoulli_exp, pmf_weights, variance


# ------------------------------------------------------------------ exact sampler (CKS 2020)
@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2)])
def test_bernoulli_exp_has_probability_exp_minus_gamma(gamma):
    rng = random.Random(7)
    n = 20_000
    hits = sum(bernoulli_exp(gamma, rng) for _ in range(n))
    p = math.exp(-gamma)
    assert abs(hits / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12


def _check_against_pmf(samples: np.ndarray, sigma2: float) -> None:
    """Mean, variance and a chi-square of the histogram against the exact pmf."""
    n = samples.size
    var = variance(sigma2)
    assert abs(samples.mean()) <= 4.5 * math.sqrt(var / n)
    # Var of the sample variance ~ (mu4 - var^2) / n; mu4 <= 3 var^2 for these light tails
    assert abs(samples.var() - var) <= 4.5 * math.sqrt(2 * var * var / n) + 1e-9
    bound = max(1, int(3 * math.sqrt(sigma2)))
    z = pmf_weights(sigma2, int(40 * math.sqrt(sigma2)) + 2)[1]  # the normaliser over (numerically) all integers
    probs = np.array(pmf_weights(sigma2, bound)[0]) / z
    tail = 1 - probs.sum()  # both tails beyond 3 sigma, lumped into one cell
    counts = np.bincount(np.clip(samples, -bound - 1, bound + 1) + bound + 1, minlength=2 * bound + 3)
    observed = np.concatenate([counts[1:-1], [counts[0] + counts[-1]]])
    expected = np.concatenate([probs, [tail]]) * n
    keep = expected > 5
    observed = np.concatenate([observed[keep], [observed[~keep].sum()]])
    expected = np.concatenate([expected[keep], [expected[~keep].sum()]])
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    assert chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-4


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(2), Fraction(49, 4)])
def test_exact_sampler_matches_the_discrete_gaussian(sigma2):
    rng = random.Random(11)
    samples = np.array([sample_discrete_gaussian(sigma2, rng) for _ in range(6000)])
    _check_against_pmf(samples, float(sigma2))


def test_exact_sampler_refuses_bad_parameters_and_handles_zero():
    assert sample_discrete_gaussian(0) == 0
    with pytest.raises(ValueError, match=">= 0"):
        sample_discrete_gaussian(-1)
    with pytest.raises(ValueError, match="rational"):
        sample_discrete_gaussian("abc")


# ------------------------------------------------------------------ table sampler
@pytest.mark.parametrize("sigma2", [0.25, 2.0, 100.0, 12345.6])
def test_table_probabilities_equal_the_pmf_and_its_distance_is_bounded(sigma2):
    table = DiscreteGaussianTable(sigma2)
    m = table.half_width
    w, z = pmf_weights(sigma2, m)
    assert np.max(np.abs(table.probabilities - np.array(w) / z)) < 1e-15
    assert table.tv_bound < 2.0 ** -100
    # the cut tail really is below 2^-128 of the mass
    assert math.exp(-(m + 1) ** 2 / (2 * sigma2)) / z < 2.0 ** -128


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(9), Fraction(10 ** 6)])
def test_table_sampler_moments_histogram_and_support(sigma2):
    table = DiscreteGaussianTable(sigma2)
    rng = np.random.default_rng(int(sigma2 * 4))
    samples = table.sample(400_000, rng.bytes)
    assert samples.dtype == np.int64 and int(np.abs(samples).max()) <= table.half_width
    _check_against_pmf(samples, float(sigma2))
    assert table.sample(0).shape == (0,)


@given(st.lists(st.integers(0, (1 << 128) - 1), min_size=1, max_size=30), st.lists(st.integers(0, (1 << 128) - 1), max_size=30),
       st.data())
@settings(max_examples=150, deadline=None)
def test_128_bit_counting_matches_python_integers(bounds, us, data):
    # boundaries that share high words (the tie-break path) and draws equal to boundaries
    bounds = sorted(bounds + [(b >> 64 << 64) | data.draw(st.integers(0, (1 << 64) - 1)) for b in bounds])
    us = us + data.draw(st.lists(st.sampled_from(bounds), max_size=10))
    mask = (1 << 64) - 1
    hi = np.array([b >> 64 for b in bounds], dtype=np.uint64)
    lo = np.array([b & mask for b in bounds], dtype=np.uint64)
    u_hi = np.array([u >> 64 for u in us], dtype=np.uint64)
    u_lo = np.array([u & mask for u in us], dtype=np.uint64)
    assert count_le_128(hi, lo, u_hi, u_lo).tolist() == [sum(b <= u for b in bounds) for u in us]


def test_table_refuses_what_it_cannot_bound():
    with pytest.raises(ValueError, match="> 0"):
        DiscreteGaussianTable(0)
    with pytest.raises(ValueError, match="coarser quantisation"):
        DiscreteGaussianTable(10 ** 12)
    with pytest.raises(ValueError, match="wrong number of bytes"):
        DiscreteGaussianTable(4).sample(3, lambda n: b"\0" * (n - 1))


# ------------------------------------------------------------------ accounting vs the reference code
# Computed with google-research/federated @ a5af8c4 distributed_dp/accounting_utils.ddgauss_epsilon
# (q = 1) and tensorflow_privacy 0.8.0 get_privacy_spent. Columns: gamma, local_stddev (model
# units), num_clients, l2 clip, beta, dim, steps, delta, rounding; then eps and the best order.
REFERENCE = [
    ((1e-3, 0.5, 10, 1.0, 0.0, 10000, 1, 1e-5, False), 2.814109167845533, 8),
    ((1e-3, 0.5, 10, 1.0, 0.0, 10000, 100, 1e-5, False), 50.126631103850336, 2),
    ((1e-2, 1.0, 5, 1.0, 0.0, 100, 10, 1e-6, False), 7.828374610068333, 5),
    ((5e-3, 2.0, 3, 1.0, 0.0, 10000, 50, 1e-5, False), 11.051691480042896, 3),
    ((1e-3, 0.5, 10, 1.0, BETA_DEFAULT, 10000, 100, 1e-5, True), 50.268631103850325, 2),
    ((2e-4, 0.3, 20, 1.0, BETA_DEFAULT, 100000, 200, 1e-5, True), 121.37177827666366, 2),
    ((1e-2, 1.0, 16, 1.0, BETA_DEFAULT, 1000, 30, 1e-5, True), 6.9750408994444815, 4),
    ((0.25, 0.25, 4, 1.0, 0.0, 16, 5, 1e-5, False), 30.169848956028925, 2),  # sigma = 1: tau matters
    ((0.5, 0.4, 8, 1.0, 0.0, 64, 3, 1e-5, False), 9.834234537889852, 4),
    ((1.0, 0.7, 6, 2.0, 0.0, 32, 2, 1e-5, False), 14.38796346109783, 3),
]


def _integer_units(gamma, stddev, l2, beta, dim, rounding):
    scale = 1.0 / (gamma + 1e-22)  # the reference's DIV_EPSILON
    if rounding:
        l2_int = rounded_l2_bound(l2 * scale, beta, dim)
        return stddev * scale, l2_int, rounded_l1_bound(l2_int, dim)
    return stddev * scale, l2 * scale, l2 * math.sqrt(dim) * scale


@pytest.mark.parametrize("params,eps_ref,order_ref", REFERENCE)
def test_epsilon_matches_the_reference_implementation(params, eps_ref, order_ref):
    gamma, stddev, n, l2, beta, dim, steps, delta, rounding = params
    sigma, l2_int, l1_int = _integer_units(gamma, stddev, l2, beta, dim, rounding)
    eps, order = ddg_epsilon(sigma=sigma, honest_shares=n, l2_sensitivity=l2_int, l1_sensitivity=l1_int, dim=dim,
                             rounds=steps, delta=delta)
    assert eps == pytest.approx(eps_ref, rel=1e-12) and order == order_ref


@pytest.mark.parametrize("target,l2,gamma,beta,steps,n,dim,delta,stddev_ref", [
    (10.0, 1.0, 1e-3, BETA_DEFAULT, 100, 10, 10000, 1e-5, 1.7017043598104995),  # reference ddgauss_local_stddev
    (3.0, 1.0, 1e-2, 0.0, 20, 5, 1000, 1e-5, 3.9397039230499584),
])
def test_local_noise_for_a_target_matches_the_reference(target, l2, gamma, beta, steps, n, dim, delta, stddev_ref):
    l2_int = rounded_l2_bound(l2 / gamma, beta, dim)
    sigma = local_sigma_for_epsilon(target, honest_shares=n, l2_sensitivity=l2_int, dim=dim, rounds=steps, delta=delta)
    assert sigma * gamma == pytest.approx(stddev_ref, rel=1e-7)  # the reference minimises (eps - target)^2 numerically
    assert ddg_epsilon(sigma=sigma, honest_shares=n, l2_sensitivity=l2_int, dim=dim, rounds=steps, delta=delta)[0] <= target
    assert ddg_epsilon(sigma=sigma * 0.999, honest_shares=n, l2_sensitivity=l2_int, dim=dim, rounds=steps,
                       delta=delta)[0] > target


def _gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """Tight epsilon of the Gaussian mechanism with sensitivity/sigma = mu (Balle & Wang 2018)."""
    return brentq(lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0, 500)


@pytest.mark.parametrize("sigma,rounds,n", [(50.0, 1, 4), (30.0, 10, 9), (100.0, 100, 16)])
def test_large_noise_approaches_the_continuous_gaussian_from_above(sigma, rounds, n):
    """With tau ~ 0 the bound is the Gaussian's RDP: never below the tight Gaussian epsilon, and
    within the usual loss of the RDP conversion."""
    assert ddg_tau(sigma, n) < 1e-300
    l2, dim = 100.0, 1000
    eps, _ = ddg_epsilon(sigma=sigma, honest_shares=n, l2_sensitivity=l2, dim=dim, rounds=rounds, delta=1e-5)
    tight = _gaussian_exact_epsilon(l2 * math.sqrt(rounds) / (sigma * math.sqrt(n)), 1e-5)
    assert tight < eps < 1.15 * tight


def test_tau_and_conversion_edge_cases():
    assert ddg_tau(1.0, 1) == 0.0
    assert ddg_tau(0.7, 2) == pytest.approx(10 * math.exp(-math.pi ** 2 * 0.49))
    assert rdp_to_epsilon([2.0], [0.0], 1e-5) == (0.0, 2.0)
    with pytest.raises(ValueError, match="sigma >= 1/2"):
        ddg_epsilon(sigma=0.4, honest_shares=3, l2_sensitivity=1.0, dim=10, rounds=1, delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        rdp_to_epsilon([2.0], [1.0], 0.0)


def test_collusion_moves_noise_onto_the_honest_hospitals():
    common = dict(target_epsilon=4.0, delta=1e-5, clip=1.0, gamma=1e-3, dim=100_000, rounds=50, n_hospitals=20)
    no_collusion = plan_distributed_noise(quorum=15, collusion=0, **common)
    colluding = plan_distributed_noise(quorum=15, collusion=5, **common)
    assert (no_collusion.honest_shares, colluding.honest_shares) == (15, 10)
    assert colluding.local_sigma > no_collusion.local_sigma
    # tau ~ 0 here, so the honest total variance is what the target fixes (up to the 1/1024 grid)
    assert colluding.central_sigma == pytest.approx(no_collusion.central_sigma, rel=1e-3)
    assert colluding.epsilon <= 4.0 and no_collusion.epsilon <= 4.0
    # one hospital alone carrying the whole noise (today's local DP, or T = Q - 1) needs sqrt(Q - T) times more
    alone = plan_distributed_noise(quorum=15, collusion=14, **common)
    assert alone.local_sigma == pytest.approx(no_collusion.local_sigma * math.sqrt(15), rel=1e-3)
    d = colluding.to_dict()
    assert d["central_sigma"] == colluding.central_sigma and d["noise_bound"] == colluding.noise_bound
    with pytest.raises(ValueError, match="no honest noise share"):
        plan_distributed_noise(quorum=15, collusion=15, **common)
    with pytest.raises(ValueError, match="raise gamma"):
        plan_distributed_noise(quorum=15, collusion=3, **{**common, "gamma": 1e-5})


def test_more_rounds_or_less_noise_cost_more_epsilon():
    kw = dict(honest_shares=8, l2_sensitivity=500.0, dim=10_000, delta=1e-5)
    e = [ddg_epsilon(sigma=s, rounds=r, **kw)[0] for s, r in [(300.0, 10), (300.0, 20), (200.0, 20)]]
    assert e[0] < e[1] < e[2]


# ------------------------------------------------------------------ conditional rounding
def test_conditional_rounding_is_bounded_and_unbiased():
    rng = np.random.default_rng(0)
    x = rng.normal(size=64)
    x *= 20.0 / np.linalg.norm(x)
    bound = rounded_l2_bound(20.0, BETA_DEFAULT, 64)
    draws = np.array([conditional_round(x, bound, rng) for _ in range(4000)])
    assert np.all(np.linalg.norm(draws, axis=1) <= bound)
    assert np.all(np.abs(draws - x) < 1)
    assert np.max(np.abs(draws.mean(axis=0) - x)) < 0.05  # conditioning barely moves the mean
    with pytest.raises(ValueError, match="no rounding within"):
        conditional_round(x, 1.0, rng, max_tries=3)


def test_a_record_moves_the_rounded_sum_by_at_most_the_sensitivity():
    rng = np.random.default_rng(1)
    records = rng.normal(size=(30, 200)) * 3
    clip, gamma = 1.0, 0.01
    bound = rounded_l2_bound(clip / gamma, BETA_DEFAULT, 200)
    full = rounded_record_sum(records, clip=clip, gamma=gamma, beta=BETA_DEFAULT, rng=np.random.default_rng(5))
    without_last = rounded_record_sum(records[:-1], clip=clip, gamma=gamma, beta=BETA_DEFAULT, rng=np.random.default_rng(5))
    diff = full - without_last  # same rounding draws for the first 29 records: the difference is the last one's
    assert np.linalg.norm(diff) <= bound and np.abs(diff).sum() <= rounded_l1_bound(bound, 200)


def test_a_plans_epsilon_after_its_releases_grows_and_reaches_the_plan_at_its_rounds():
    plan = plan_distributed_noise(target_epsilon=1.0, delta=1e-5, clip=1.0, gamma=1 / 1024, dim=4, rounds=5,
                                  n_hospitals=20, quorum=3, collusion=1)
    eps = [plan.epsilon_after(r) for r in range(8)]
    assert eps[0] == 0.0 and all(a < b for a, b in zip(eps, eps[1:]))
    assert eps[5] == pytest.approx(plan.epsilon) and eps[5] <= 1.0
    assert eps[6] > 1.0  # one release beyond the plan costs more than the target: a caller must refuse it
    with pytest.raises(ValueError):
        plan.epsilon_after(-1)
