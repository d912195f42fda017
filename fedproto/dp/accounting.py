"""Privacy accounting for the distributed discrete Gaussian sum (Kairouz, Liu, Steinke, "The
Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML
2021, arXiv:2102.06387), with the formulas of the authors' reference code
google-research/federated, distributed_dp/accounting_utils.py (ddgauss_epsilon,
compute_rdp_dgaussian, rounded_l2_norm_bound, rounded_l1_norm_bound) and the RDP -> (eps, delta)
conversion of tensorflow_privacy 0.8 (rdp_accountant._compute_eps, the bound of Canonne, Kamath,
Steinke 2020, Proposition 12). All quantities here are in integer units (after scaling by
1/gamma and rounding).

What is accounted (record-level DP, no subsampling), and the assumptions it rests on:
  * neighbouring datasets differ by one record at one hospital;
  * per round every hospital sums the clipped (L2 <= c), scaled (1/gamma), conditionally rounded
    gradients of ALL its records (so one record moves the sum by one integer vector r with
    ||r||_2 <= l2_sensitivity, ||r||_1 <= l1_sensitivity), clamps each coordinate (1-Lipschitz),
    adds one noise share N_Z(0, sigma^2) per coordinate and masks; only the sum over the
    survivors is ever unmasked (secure aggregation, fedproto.secagg);
  * at most T hospitals collude with the platform and at least the quorum Q survive, so every
    released sum carries at least n = Q - T honest shares; more shares only add independent noise
    (post-processing cannot hurt), so n = Q - T is what is accounted;
  * R rounds compose (adaptively) by adding RDP; every round uses every record once (q = 1, no
    amplification by sampling); the model between rounds is post-processing of released sums;
  * nothing else about the data leaves a hospital (e.g. its sample count, unless public or noised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 129)) + (256.0,)  # as the reference code
BETA_DEFAULT = math.exp(-0.5)  # the paper's conditional-rounding parameter


def _pos(v: float, name: str, strict: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (strict and v == 0):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {v!r}")
    return float(v)


def _count(v: int, name: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def rounded_l2_bound(l2_scaled: float, beta: float, dim: int) -> float:
    """L2 bound of a vector of L2 norm <= l2_scaled after conditional randomized rounding
    (reference ``rounded_l2_norm_bound``; arXiv:2102.06387 Section 4.1): min(c + sqrt(d),
    sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2))), or c + sqrt(d) when beta = 0."""
    c, d = _pos(l2_scaled, "l2_scaled"), _count(dim, "dim")
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    bound1 = c + math.sqrt(d)
    if beta == 0:
        return bound1
    sq = c * c + 0.25 * d + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + 0.5 * math.sqrt(d))
    return min(bound1, math.sqrt(sq))


def rounded_l1_bound(l2_int: float, dim: int) -> float:
    """L1 bound of an integer vector of L2 norm <= l2_int: l2 * min(sqrt(d), l2) (|v_i| <= v_i^2)."""
    return _pos(l2_int, "l2_int") * min(math.sqrt(_count(dim, "dim")), l2_int)


def ddg_tau(sigma: float, n: int) -> float:
    """tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)) (arXiv:2102.06387 Theorem 1)."""
    return 10.0 * math.fsum(math.exp(-2.0 * (math.pi * sigma) ** 2 * (k / (k + 1))) for k in range(1, n))


def ddg_rdp(orders: Sequence[float], *, sigma: float, n: int, l2_sensitivity: float, l1_sensitivity: float,
            dim: int) -> np.ndarray:
    """RDP of ONE release of the sum of n shares N_Z(0, sigma^2) (arXiv:2102.06387 Proposition 14):
    min(a/2 s2^2 + tau d, a/2 (s2^2 + 2 s1 tau + tau^2 d), a/2 (s2 + sqrt(d) tau)^2) with
    s2 = l2/(sqrt(n) sigma), s1 = l1/(sqrt(n) sigma); orders are floored to integers as the
    reference code does."""
    if _pos(sigma, "sigma") < 0.5:
        raise ValueError(f"sigma = {sigma} < 1/2: Theorem 1 of Kairouz et al. needs sigma >= 1/2 (in integer units)")
    n, d = _count(n, "honest noise shares"), _count(dim, "dim")
    s2 = _pos(l2_sensitivity, "l2_sensitivity", strict=False) / (math.sqrt(n) * sigma)
    s1 = _pos(l1_sensitivity, "l1_sensitivity", strict=False) / (math.sqrt(n) * sigma)
    tau = ddg_tau(sigma, n)
    out = []
    for a in orders:
        a = float(int(a))
        if a <= 1:
            raise ValueError(f"RDP orders must be > 1, got {a}")
        out.append(min(a / 2 * s2 ** 2 + tau * d, a / 2 * (s2 ** 2 + 2 * s1 * tau + tau ** 2 * d),
                       a / 2 * (s2 + math.sqrt(d) * tau) ** 2))
    return np.array(out)


def rdp_to_epsilon(orders: Sequence[float] | np.ndarray, rdp: Sequence[float] | np.ndarray, delta: float) -> tuple[float, float]:
    """(eps, best order) from RDP values: eps = min_a rdp(a) + log1p(-1/a) - log(delta a)/(a - 1)
    (Canonne, Kamath, Steinke 2020 Prop. 12; as tensorflow_privacy 0.8 rdp_accountant._compute_eps)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if len(orders) != len(rdp) or not len(orders):
        raise ValueError("orders and rdp must be non-empty and of equal length")
    best, best_order = math.inf, float(orders[0])
    for a, r in zip(orders, rdp):
        a, r = float(a), float(r)
        if a < 1 or r < 0:
            raise ValueError("RDP orders must be >= 1 and RDP values >= 0")
        if delta ** 2 + math.expm1(-r) >= 0:
            eps = 0.0  # delta <= sqrt(1 - exp(-KL)) already
        elif a > 1.01:
            eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        else:
            eps = math.inf
        if eps < best:
            best, best_order = eps, a
    return max(0.0, best), best_order


def ddg_epsilon(*, sigma: float, honest_shares: int, l2_sensitivity: float, dim: int, rounds: int, delta: float,
                l1_sensitivity: float | None = None, orders: Sequence[float] = RDP_ORDERS) -> tuple[float, float]:
    """(eps, order) after ``rounds`` releases of a sum carrying ``honest_shares`` shares N_Z(0, sigma^2)
    (RDP composed over rounds; l1 defaults to rounded_l1_bound(l2, dim), valid for integer vectors)."""
    l1 = rounded_l1_bound(l2_sensitivity, dim) if l1_sensitivity is None else l1_sensitivity
    per_round = ddg_rdp(orders, sigma=sigma, n=honest_shares, l2_sensitivity=l2_sensitivity, l1_sensitivity=l1, dim=dim)
    return rdp_to_epsilon(orders, per_round * _count(rounds, "rounds"), delta)


def local_sigma_for_epsilon(target_epsilon: float, *, honest_shares: int, l2_sensitivity: float, dim: int, rounds: int,
                            delta: float, l1_sensitivity: float | None = None, orders: Sequence[float] = RDP_ORDERS,
                            rel_tol: float = 1e-9) -> float:
    """Smallest sigma (within rel_tol, rounded up) of each honest share giving eps <= target_epsilon."""
    target = _pos(target_epsilon, "target epsilon")

    def eps(s: float) -> float:
        return ddg_epsilon(sigma=s, honest_shares=honest_shares, l2_sensitivity=l2_sensitivity, dim=dim, rounds=rounds,
                           delta=delta, l1_sensitivity=l1_sensitivity, orders=orders)[0]

    lo, hi = 0.5, 1.0
    if eps(lo) <= target:
        return lo
    while eps(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e12:
            raise ValueError(f"epsilon {target} is out of reach (needs sigma > 1e12 integer units): raise epsilon or the step")
    while hi / lo - 1 > rel_tol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
