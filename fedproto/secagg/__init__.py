"""Secure aggregation for BFV uploads: pairwise + self masks mod the plaintext modulus, with
dropout recovery by Shamir-shared seeds (Bonawitz et al., CCS 2017; Bell et al., CCS 2020).

A single decrypted upload is uniform mod t; only the sum over the survivors is meaningful once
the platform adds the correction reconstructed from at least ``threshold`` survivors' shares.
See docs/privacy.md for the threat model and what remains to wire into the node and platform.

    node:      SecAggClient(setup, hospital, node_private_key) -> advert / share / receive / mask / unmask
    platform:  RoundCoordinator(setup) -> directory / inbox / unmask_request / correction / transcript
    packing:   plan_packing, offset_values, pack, unpack_sum (exact no-wrap bounds)
"""

from .bounds import PackingBounds, offset_values, pack, plan_packing, unpack_sum
from .client import SecAggClient
from .coordinator import RoundCoordinator, reconstruct_secrets, round_correction
from .errors import SecAggError
from .kdf import PROTOCOL
from .masking import add_mod, sub_mod, sum_mod
from .messages import (
    KeyAdvert,
    KeyDirectory,
    RoundSetup,
    RoundTranscript,
    ShareBundle,
    ShareInbox,
    SharePayload,
    UnmaskRequest,
    UnmaskResponse,
    min_threshold,
)
from .prg import expand_uniform

__all__ = [
    "PROTOCOL", "KeyAdvert", "KeyDirectory", "PackingBounds", "RoundCoordinator", "RoundSetup", "RoundTranscript",
    "SecAggClient", "SecAggError", "ShareBundle", "ShareInbox", "SharePayload", "UnmaskRequest", "UnmaskResponse",
    "add_mod", "expand_uniform", "min_threshold", "offset_values", "pack", "plan_packing", "reconstruct_secrets",
    "round_correction", "sub_mod", "sum_mod", "unpack_sum",
]
