"""The noise each hospital adds in distributed-DP mode, for a target (epsilon, delta).

``plan_distributed_noise`` turns study-level parameters into the per-hospital discrete Gaussian
share: local sigma (integer units) such that the sum of the Q - T honest shares in any released
aggregate gives (target_epsilon, delta)-DP over R rounds (fedproto.dp.accounting, whose
docstring states the assumptions), the sensitivity after rounding, the support bound M of the
table sampler (what the packing must leave room for), and the delta it spends on the sampler's
statistical distance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from .accounting import BETA_DEFAULT, ddg_epsilon, local_sigma_for_epsilon, rounded_l1_bound, rounded_l2_bound
from .dgauss_table import MAX_HALF_WIDTH, support_half_width

SAMPLER_TV_MAX = 2.0 ** -100  # DiscreteGaussianTable.tv_bound is below this for every table it builds
SIGMA_GRID = 1024  # sigma is rounded up to a multiple of 1/1024 (short Fractions for the exact sampler)


@dataclass(frozen=True)
class DistributedNoisePlan:
    target_epsilon: float
    delta: float
    clip: float  # per-record L2 clip (model units)
    gamma: float  # quantisation step (model units per integer)
    beta: float
    dim: int
    rounds: int
    n_hospitals: int
    quorum: int
    collusion: int
    honest_shares: int  # Q - T
    l2_sensitivity: float  # integer units, after rounding
    l1_sensitivity: float
    local_sigma: float  # each hospital's N_Z(0, local_sigma^2), integer units
    noise_bound: int  # |share| <= M with the table sampler
    sampler_delta: float  # delta spent on the sampler's statistical distance
    epsilon: float  # achieved (<= target)
    order: float

    @property
    def local_sigma2(self) -> Fraction:
        return Fraction(self.local_sigma) ** 2

    @property
    def local_sigma_model_units(self) -> float:
        return self.local_sigma * self.gamma

    @property
    def central_sigma(self) -> float:
        """Standard-deviation parameter of the honest noise in a released sum (integer units)."""
        return self.local_sigma * math.sqrt(self.honest_shares)

    def epsilon_after(self, releases: int) -> float:
        """Epsilon of ``releases`` released sums under this noise (the plan's epsilon at ``rounds``).
        The plan's guarantee covers at most ``rounds`` releases: its sampler delta is sized for them,
        so a caller refuses a release beyond ``rounds`` (fedproto.ddp_config.release_refusal)."""
        if isinstance(releases, bool) or not isinstance(releases, int) or releases < 0:
            raise ValueError(f"releases must be a non-negative integer, got {releases!r}")
        if releases == 0:
            return 0.0
        eps, _ = ddg_epsilon(sigma=self.local_sigma, honest_shares=self.honest_shares, l2_sensitivity=self.l2_sensitivity,
                             l1_sensitivity=self.l1_sensitivity, dim=self.dim, rounds=releases,
                             delta=self.delta - self.sampler_delta)
        return float(eps)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "local_sigma_model_units": self.local_sigma_model_units, "central_sigma": self.central_sigma}


def plan_distributed_noise(*, target_epsilon: float, delta: float, clip: float, gamma: float, dim: int, rounds: int,
                           n_hospitals: int, quorum: int, collusion: int, beta: float = BETA_DEFAULT,
                           tail_bits: int = 128) -> DistributedNoisePlan:
    for name, v in (("dim", dim), ("rounds", rounds), ("n_hospitals", n_hospitals), ("quorum", quorum)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(collusion, bool) or not isinstance(collusion, int) or not 0 <= collusion < quorum <= n_hospitals:
        raise ValueError(f"need 0 <= collusion T < quorum Q <= n_hospitals, got T={collusion!r}, Q={quorum}, "
                         f"K={n_hospitals}: with T >= Q no honest noise share is guaranteed")
    if not (math.isfinite(clip) and clip > 0 and math.isfinite(gamma) and gamma > 0):
        raise ValueError("clip and gamma must be finite and > 0")
    if not (math.isfinite(target_epsilon) and target_epsilon > 0 and 0 < delta < 1):
        raise ValueError("target_epsilon must be > 0 and delta in (0, 1)")
    sampler_delta = n_hospitals * dim * rounds * (1 + math.exp(min(target_epsilon, 700.0))) * SAMPLER_TV_MAX
    if sampler_delta > delta / 100:
        raise ValueError(f"the sampler's statistical distance over {n_hospitals} x {dim} x {rounds} draws would use over 1% "
                         f"of delta; raise delta or lower epsilon")
    acc_delta = delta - sampler_delta
    honest = quorum - collusion
    l2 = rounded_l2_bound(clip / gamma, beta, dim)
    l1 = rounded_l1_bound(l2, dim)
    sigma = local_sigma_for_epsilon(target_epsilon, honest_shares=honest, l2_sensitivity=l2, l1_sensitivity=l1, dim=dim,
                                    rounds=rounds, delta=acc_delta)
    sigma = math.ceil(sigma * SIGMA_GRID) / SIGMA_GRID
    eps, order = ddg_epsilon(sigma=sigma, honest_shares=honest, l2_sensitivity=l2, l1_sensitivity=l1, dim=dim,
                             rounds=rounds, delta=acc_delta)
    m = support_half_width(Fraction(sigma) ** 2, tail_bits)
    if m > MAX_HALF_WIDTH:
        raise ValueError(f"local sigma {sigma:.6g} integer units is too wide for the table sampler: raise gamma (a coarser "
                         f"quantisation step) so that sigma = {sigma * gamma:.4g} model units spans fewer integers")
    return DistributedNoisePlan(float(target_epsilon), float(delta), float(clip), float(gamma), float(beta), dim, rounds,
                                n_hospitals, quorum, collusion, honest, l2, l1, sigma, m, sampler_delta, eps, order)
