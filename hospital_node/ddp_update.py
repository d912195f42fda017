"""A hospital's contribution to a distributed-DP round (DP-FedSGD with secure aggregation).

Per round, from the global model: the gradient of every record's own loss, each clipped to L2
<= clip_norm, scaled by 1/gamma and conditionally rounded (fedproto.dp.rounding), summed over
ALL the hospital's records (one vector per round: no local steps, so the only thing that leaves
the hospital is a summand of the released sum, which is what the distributed-noise guarantee
covers), plus one share N_Z(0, sigma_local^2) per coordinate from the table sampler, offset and
packed (fedproto/ddp_slots.py), masked (SecAggClient.mask) and BFV-encrypted.

The global step every key holder applies to the decrypted sum S over n survivors:
    theta <- theta - learning_rate * gamma * S / (n * N),  N = batch_size (public normaliser).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedproto import ddp_config, ddp_slots
from fedproto.dp import DiscreteGaussianTable, DistributedNoisePlan, rounded_record_sum
from fedproto.secagg import PackingBounds, SecAggClient
from fedproto.study import StudyConfig

from .networks import flatten
from .trainer import apply_update

CHUNK = 256  # records per vmap call (bounds the per-record gradient matrix to CHUNK x n_params)


@dataclass(frozen=True)
class DdpContribution:
    parts: list[bytes]  # masked, encrypted slots: what is uploaded
    n_records: int  # stays on the node (never sent in this mode)
    plan: DistributedNoisePlan
    bounds: PackingBounds


def per_record_gradients(model: nn.Module, X: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """[n, n_params] float64: each record's loss gradient, in ``networks.flatten`` order."""
    names = list(model.state_dict())
    params = {k: v.detach() for k, v in model.named_parameters()}
    if list(params) != names:
        raise ValueError("distributed DP needs a model whose state is exactly its parameters (no buffers)")
    crit = nn.BCEWithLogitsLoss() if task == "binary_classification" else nn.MSELoss()

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return crit(out.reshape(-1), yi.reshape(-1))

    per = vmap(grad(loss), in_dims=(None, 0, 0))
    Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    rows = []
    for a in range(0, len(Xt), CHUNK):
        g = per(params, Xt[a:a + CHUNK], yt[a:a + CHUNK])
        rows.append(torch.cat([g[k].reshape(g[k].shape[0], -1).to(torch.float64) for k in names], dim=1).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, sum(p.numel() for p in params.values())))


@lru_cache(maxsize=8)
def _table(sigma2: Fraction) -> DiscreteGaussianTable:
    return DiscreteGaussianTable(sigma2)


def integer_sum(study: StudyConfig, model: nn.Module, X: np.ndarray, y: np.ndarray, plan: DistributedNoisePlan,
                rng: np.random.Generator) -> np.ndarray:
    """The rounded, clipped gradient sum over all records (int64, integer units of gamma)."""
    p = study.privacy
    out = np.zeros(study.n_params, dtype=np.int64)
    for a in range(0, len(X), CHUNK):
        rows = per_record_gradients(model, X[a:a + CHUNK], y[a:a + CHUNK], study.task)
        out += rounded_record_sum(rows, clip=p.clip_norm, gamma=p.quant_step, beta=plan.beta, rng=rng)
    return out


def noised_sum(study: StudyConfig, model: nn.Module, X: np.ndarray, y: np.ndarray, plan: DistributedNoisePlan,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(integer gradient sum, this hospital's noise share), both int64 of length n_params."""
    g = integer_sum(study, model, X, y, plan, rng)
    return g, _table(plan.local_sigma2).sample(study.n_params)  # os.urandom: the noise must stay secret


def contribute(study: StudyConfig, model: nn.Module, X: np.ndarray, y: np.ndarray, client: SecAggClient,
               secret: bytes, rng: np.random.Generator) -> DdpContribution:
    """Masked, encrypted upload of this hospital's noised gradient sum for the client's round."""
    plan = ddp_config.noise_plan(study)
    bounds = ddp_config.packing(study, plan)
    g, noise = noised_sum(study, model, X, y, plan, rng)
    slots = ddp_slots.encode(g, noise, bounds, client.setup.vector_len)
    parts = ddp_config.bfv_codec(study).encrypt_slots(secret, client.mask(slots))
    return DdpContribution(parts, len(X), plan, bounds)


def global_step(study: StudyConfig, model: nn.Module, sums: np.ndarray, n_contributors: int) -> nn.Module:
    """The next global model from the decoded integer sum over ``n_contributors`` survivors."""
    p = study.privacy
    scale = study.learning_rate * p.quant_step / (n_contributors * ddp_config.public_normaliser(study))
    update = -scale * np.asarray(sums, dtype=np.float64)
    if update.shape != flatten(model).shape:
        raise ValueError(f"the decoded sum has {update.size} values, the model {flatten(model).size} parameters")
    return apply_update(model, update)
