"""A distributed-DP study simulated with the node's and fedproto's own code, in one process.

Per round every hospital computes, from the global model, exactly what hospital_node/ddp_update.py
uploads before masking: ``ddp_update.integer_sum`` (each record's loss gradient, clipped to
clip_norm, scaled by 1/gamma, conditionally rounded, summed over ALL the hospital's training rows)
plus one share N_Z(0, sigma_local^2) per coordinate from the table sampler of the study's own
noise plan (``ddp_config.noise_plan``: sized for Q - T honest shares), offset and packed into slots
(``ddp_slots.encode``). The slot vectors are summed mod t (``secagg.sum_mod``: what the
homomorphic sum of the uploads decrypts to, BFV addition being exact mod t) and decoded with
``ddp_slots.decode_sum``; the global model moves by ``ddp_update.global_step``.

Left out, because they do not change a single bit of the decoded sum:
  * the pairwise and self masks: they cancel exactly mod t in the sum over the survivors once the
    round's correction is added (tests/fedproto property tests), so the correction here is zero;
  * the BFV encryption: the batching codec's homomorphic sum is exact on the plaintext slots.
No hospital drops out, so the sum carries K noise shares (the plan guarantees the epsilon with
only Q - T of them: with Q = K and T = 1, K - 1).

The noise is drawn from a seeded stream (``random_bytes = rng.bytes``) so that a seed is
reproducible; the node draws it from os.urandom (same sampler, same distribution).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import utility_sim
from utility_data import Hospital

from fedproto import ddp_config, ddp_slots
from fedproto.dp import DiscreteGaussianTable
from fedproto.secagg import sum_mod
from fedproto.study import StudyConfig, validate_study
from hospital_node import ddp_update
from hospital_node.ddp_round import epsilon_after
from hospital_node.networks import initial_model

COLLUSION = 1  # T: the docs' example, the platform colluding with one hospital
QUANT_BITS = 24  # digit width the noise needs (docs/privacy.md: 24 bits with max_hospitals 20 -> 2 x 29 bits)


def ddp_study(sizes: list[int], *, n_features: int, epsilon: float, seed: int, center: np.ndarray | None,
              collusion: int = COLLUSION, quorum: int | None = None) -> StudyConfig:
    """The distributed-mode study matching the benchmark's ``auto`` setting: auto's rounds, learning
    rate and clip; batch_size (distributed mode's public normaliser N, full batch being refused there)
    = the mean declared size, so the step lr * gamma * S / (K N) is auto's full-batch step on the
    pooled mean gradient when the hospitals are of equal size."""
    feats = [{"name": f"x{j}", "type": "float"} for j in range(n_features)]
    if center is not None:
        for f, (c, s) in zip(feats, center):
            f.update(center=float(c), scale=float(s))
    st = utility_sim.settings_for(utility_sim.SETUPS["auto"], sizes)
    k = len(sizes)
    return validate_study({
        "name": "utility ddp", "schema": {"task": "binary_classification", "features": feats, "label": {"name": "y"}},
        "model": {"type": "logistic_regression"}, "rounds": st["rounds"], "local_epochs": 1,
        "batch_size": int(round(float(np.mean(sizes)))), "learning_rate": st["learning_rate"],
        "privacy": {"epsilon": epsilon, "delta": utility_sim.DELTA, "clip_norm": st["clip_norm"], "mode": "distributed",
                    "collusion": collusion},
        "encryption": {"codec": "bfv-packed-v1", "max_hospitals": k, "quant_bits": QUANT_BITS},
        "quorum": k if quorum is None else quorum, "round_deadline_s": 600, "seed": seed,
        "evaluation": {"holdout": utility_sim.SETUPS["auto"].holdout, "local_baseline": False},
    }, n_hospitals=k)


@lru_cache(maxsize=16)
def _table(sigma2) -> DiscreteGaussianTable:
    return DiscreteGaussianTable(sigma2)


def federated(sites: list[utility_sim.Site], study: StudyConfig, *, seed: int):
    """The global model after the study's rounds, and the noise plan."""
    plan = ddp_config.noise_plan(study)
    bounds = ddp_config.packing(study, plan)
    n_slots = ddp_config.n_slots(study)
    table = _table(plan.local_sigma2)
    rng = np.random.default_rng(seed)
    model = initial_model(study)
    k = len(sites)
    zero = np.zeros(n_slots, dtype=np.uint64)
    for _ in range(study.rounds):
        uploads = []
        for s in sites:
            g = ddp_update.integer_sum(study, model, s.X_train, s.y_train, plan, rng)
            z = table.sample(study.n_params, random_bytes=rng.bytes)
            uploads.append(ddp_slots.encode(g, z, bounds, n_slots))
        sums = ddp_slots.decode_sum(sum_mod(uploads, n_slots, bounds.modulus), zero, study.n_params, bounds, k)
        model = ddp_update.global_step(study, model, sums, k)
    # what every node's ledger records after the last round (ddp_round.epsilon_after)
    assert epsilon_after(study, study.rounds) <= study.privacy.epsilon + 1e-9
    return model, plan


def run_one(hosp: list[Hospital], *, epsilon: float, seed: int, quorum: int | None = None) -> dict:
    """AUCs of the distributed-DP federated model (own test rows, pooled) and its plan's sigmas."""
    sites = utility_sim.prepare_sites(utility_sim.SETUPS["auto"], hosp, epsilon=epsilon, seed=seed)
    pooled = np.vstack([h.X_node for h in hosp])
    sd = pooled.std(axis=0)
    center = np.c_[pooled.mean(axis=0), np.where(sd > 1e-12, sd, 1.0)]  # as prepare_sites' "global" standardisation
    study = ddp_study([len(h.y_node) for h in hosp], n_features=hosp[0].X_node.shape[1], epsilon=epsilon, seed=seed,
                      center=center, quorum=quorum)
    model, plan = federated(sites, study, seed=seed)
    own, pooled_auc = utility_sim.aucs(utility_sim.scores(model, sites), hosp)
    return {"fed_own": own, "fed_pooled": pooled_auc, "local_sigma": plan.local_sigma,
            "central_nm": plan.central_sigma / plan.l2_sensitivity, "honest": plan.honest_shares,
            # what the released sum carries with all K shares in it (the guarantee counts only Q - T)
            "sum_nm": plan.local_sigma * len(hosp) ** 0.5 / plan.l2_sensitivity,
            "epsilon": plan.epsilon}
