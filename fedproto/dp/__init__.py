"""Distributed differential privacy: exact and fast discrete Gaussian samplers, per-record
conditional rounding, and the accounting of the distributed discrete Gaussian sum
(Kairouz, Liu, Steinke, ICML 2021). Pure Python + numpy; see docs/privacy.md.
"""

from .accounting import (
    BETA_DEFAULT,
    RDP_ORDERS,
    ddg_epsilon,
    ddg_rdp,
    ddg_tau,
    local_sigma_for_epsilon,
    rdp_to_epsilon,
    rounded_l1_bound,
    rounded_l2_bound,
)
from .dgauss_table import DiscreteGaussianTable, support_half_width
from .discrete_gaussian import sample_discrete_gaussian, sample_vector
from .plan import DistributedNoisePlan, plan_distributed_noise
from .rounding import conditional_round, rounded_record_sum

__all__ = [
    "BETA_DEFAULT", "RDP_ORDERS", "DiscreteGaussianTable", "DistributedNoisePlan", "conditional_round", "ddg_epsilon",
    "ddg_rdp", "ddg_tau", "local_sigma_for_epsilon", "plan_distributed_noise", "rdp_to_epsilon", "rounded_l1_bound",
    "rounded_l2_bound", "rounded_record_sum", "sample_discrete_gaussian", "sample_vector", "support_half_width",
]
