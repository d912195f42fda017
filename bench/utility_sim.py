"""One study simulated the way the platform runs it, with the node's own code, in one process.

Each hospital prepares its data as the node does (hospital_node.data.prepare: the study's local
test split, sized by its ``evaluation.holdout``, then standardisation with the schema's reference
constants when the schema has them, else the hospital's own statistics), plans its noise with
hospital_node.trainer.plan_noise (reserving the local-only baseline when the study has one) and
trains each round's job with hospital_node.trainer.train_job (DP-SGD, grad_sample_mode "fused")
from the node's initial model (zeros for logistic regression). The global model moves by the
aggregate of the round's updates, computed with the study codec's own quantisation
(fedproto.codec: weight min(n, cap)/cap, clip to update_clip, stochastic rounding to quant_bits,
then exactly the decode arithmetic of decrypt_aggregate): the encrypted sum is exact on integers,
so this is the number the nodes decrypt, without the encryption (tests/fedproto/test_codec.py
checks the round trip within one quantisation step).

A ``Setup`` is a set of study settings: fixed numbers (a portal preset) or ``auto``
(fedproto.tuning.auto_settings from the hospitals' declared sizes, here their row counts), how
features are standardised, the node's held-out share, and whether the study carries the
in-protocol local-only baseline (then federated jobs and baseline share each hospital's budget,
and "local-only" below is that baseline; without it, "local-only" is what the hospital could
train alone with its whole budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from utility_data import Hospital

from fedproto import tuning
from fedproto.codec import DEFAULT_CODEC, get_codec
from fedproto.study import StudyConfig, validate_study
from hospital_node import data as node_data
from hospital_node.networks import initial_model
from hospital_node.planning import wants_baseline
from hospital_node.trainer import (
    apply_update,
    epsilon_of,
    plan_noise,
    predict,
    train_job,
    train_local_only,
)

DELTA = 1e-5


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    preset: str  # a key of fedproto.tuning.STUDY_PRESETS, or "auto"
    scale_preset: bool = False  # the preset's batch scaled to the declared sizes (tuning.scaled_preset)
    standardise: str = "local"  # "local": each hospital's own statistics; "global": reference constants in the schema
    holdout: Any = 0.2  # the study's evaluation.holdout (the node's own local test split)
    baseline: bool = False  # the study's evaluation.local_baseline (in-protocol baseline, inside the budget)


SETUPS = {
    "standard": Setup("standard", 'portal "Standard" preset (batch 64), CSV header (local standardisation), 20 % split',
                      preset="standard"),
    "scaled": Setup("scaled", '"Standard" preset, batch scaled to the declared sizes, shared standardisation, '
                              "auto split", preset="standard", scale_preset=True, standardise="global", holdout="auto"),
    "auto": Setup("auto", "auto settings from the declared sizes, shared standardisation, auto split; local-only: "
                          "the hospital alone with its whole budget", preset="auto", standardise="global",
                  holdout="auto"),
    "auto+baseline": Setup("auto+baseline", "auto, with the in-protocol local-only baseline (federated jobs and "
                                            "baseline share the budget)", preset="auto", standardise="global",
                           holdout="auto", baseline=True),
}


def settings_for(setup: Setup, sizes: list[int]) -> dict[str, Any]:
    """rounds, local_epochs, batch_size, learning_rate, clip_norm of ``setup`` for these declared sizes."""
    if setup.preset == "auto":
        return tuning.auto_settings(sizes, "logistic_regression")
    p = tuning.scaled_preset(setup.preset, sizes if setup.scale_preset else None)
    return {k: p[k] for k in ("rounds", "local_epochs", "batch_size", "learning_rate", "clip_norm")}


def study_for(setup: Setup, *, sizes: list[int], n_features: int, epsilon: float, seed: int,
              center: np.ndarray | None) -> StudyConfig:
    feats = [{"name": f"x{j}", "type": "float"} for j in range(n_features)]
    if center is not None:  # reference constants: every hospital standardises identically
        for f, (c, s) in zip(feats, center):
            f.update(center=float(c), scale=float(s))
    st = settings_for(setup, sizes)
    return validate_study({
        "name": f"utility {setup.key}", "schema": {"task": "binary_classification", "features": feats,
                                                   "label": {"name": "y"}},
        "model": {"type": "logistic_regression"}, "rounds": st["rounds"], "local_epochs": st["local_epochs"],
        "batch_size": st["batch_size"], "learning_rate": st["learning_rate"],
        "privacy": {"epsilon": epsilon, "delta": DELTA, "clip_norm": st["clip_norm"]},
        "encryption": {"codec": DEFAULT_CODEC}, "quorum": len(sizes), "round_deadline_s": 600, "seed": seed,
        "evaluation": {"holdout": setup.holdout, "local_baseline": setup.baseline},
    }, n_hospitals=len(sizes))


@dataclass
class Site:
    """One hospital as its node sees it: the study, its training rows, the benchmark's test rows
    standardised as the node standardises, and whether it trains the in-protocol baseline."""

    study: StudyConfig
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    baseline: bool


def prepare_sites(setup: Setup, hosp: list[Hospital], *, epsilon: float, seed: int) -> list[Site]:
    center = None
    if setup.standardise == "global":
        # what federated preprocessing would give: the mean and s.d. of all hospitals' rows
        pooled = np.vstack([h.X_node for h in hosp])
        sd = pooled.std(axis=0)
        center = np.c_[pooled.mean(axis=0), np.where(sd > 1e-12, sd, 1.0)]
    study = study_for(setup, sizes=[len(h.y_node) for h in hosp], n_features=hosp[0].X_node.shape[1],
                      epsilon=epsilon, seed=seed, center=center)
    sites = []
    for h in hosp:
        ds = node_data.prepare(study, h.X_node, h.y_node)
        X_test = ((h.X_test - ds.center) / ds.scale).astype(np.float32)
        sites.append(Site(study, ds.X_train, ds.y_train, X_test, h.y_test, wants_baseline(study, ds)))
    return sites


def aggregate(updates: list[np.ndarray], n_samples: list[int], enc: dict, rng: np.random.Generator) -> np.ndarray:
    """The mean update the nodes decrypt: the codec's quantisation, summed, decoded as decrypt_aggregate does."""
    codec = get_codec(enc["codec"])
    enc = codec.validate_config(enc)
    qs, wnums = zip(*(codec.quantise(enc, u, n, rng) for u, n in zip(updates, n_samples)))
    c = enc["update_clip"]
    step = 2.0 * c / ((1 << enc["quant_bits"]) - 1)
    sums = np.sum([q.astype(np.float64) for q in qs], axis=0)
    return (sums * step - len(updates) * c) * (enc["weight_cap_samples"] / sum(wnums))


def federated(sites: list[Site], *, seed: int) -> tuple[torch.nn.Module, list]:
    base = sites[0].study
    model = initial_model(base)
    plans = [plan_noise(s.study, len(s.y_train), baseline=s.baseline) for s in sites]
    rng = np.random.default_rng(seed)
    histories: list[list] = [[] for _ in sites]
    for rnd in range(base.rounds):
        updates = []
        for i, (s, plan) in enumerate(zip(sites, plans)):
            res = train_job(s.study, model, s.X_train, s.y_train, plan, seed=seed * 1000 + rnd * 10 + i)
            updates.append(res.update)
            histories[i].append((plan.noise_multiplier, plan.sample_rate, res.steps))
        model = apply_update(model, aggregate(updates, [len(s.y_train) for s in sites], base.encryption, rng))
    for h in histories:  # the budget was kept, as the node's ledger would check
        assert epsilon_of(h, DELTA) <= base.privacy.epsilon + 1e-9
    return model, plans


def local_only(site: Site, plan, *, seed: int) -> torch.nn.Module:
    """The in-protocol baseline (the plan's sigma; federated jobs + baseline end at the budget), or,
    without one, what the hospital could train alone with its whole budget (train_local_only)."""
    sigma = plan.noise_multiplier if site.baseline else None
    model = train_local_only(site.study, site.X_train, site.y_train, noise_multiplier=sigma, seed=seed)
    if site.baseline:
        entry = (plan.noise_multiplier, plan.sample_rate, plan.baseline_steps)
        jobs = [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_job)] * site.study.rounds
        assert epsilon_of([*jobs, entry], DELTA) <= site.study.privacy.epsilon + 1e-9
    return model


def central(hosp: list[Hospital]) -> list[np.ndarray]:
    """Non-private logistic regression (scikit-learn, L2 C=1) on all hospitals' rows, pooled
    standardisation; returns its scores on each hospital's test rows."""
    X = np.vstack([h.X_node for h in hosp])
    y = np.concatenate([h.y_node for h in hosp])
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    clf = LogisticRegression(max_iter=1000).fit((X - mu) / sd, y)
    return [clf.decision_function((h.X_test - mu) / sd) for h in hosp]


def auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def scores(model: torch.nn.Module, sites: list[Site]) -> list[np.ndarray]:
    return [predict(model, s.X_test) for s in sites]


def aucs(per_site_scores: list[np.ndarray], hosp: list[Hospital]) -> tuple[list[float], float]:
    """(AUC on each hospital's own test rows, AUC on the pooled test rows)."""
    own = [auc(h.y_test, sc) for h, sc in zip(hosp, per_site_scores)]
    pooled = auc(np.concatenate([h.y_test for h in hosp]), np.concatenate(per_site_scores))
    return own, pooled


def run_one(setup: Setup, hosp: list[Hospital], *, epsilon: float, seed: int) -> dict:
    """AUCs of the federated model, each hospital's local-only model (own test rows, and pooled for
    the best one) and the central non-private model."""
    sites = prepare_sites(setup, hosp, epsilon=epsilon, seed=seed)
    model, plans = federated(sites, seed=seed)
    fed_own, fed_pooled = aucs(scores(model, sites), hosp)
    local_own, local_pooled = [], []
    for i, (s, plan) in enumerate(zip(sites, plans)):
        m = local_only(s, plan, seed=seed * 1000 + 900 + i)
        local_own.append(auc(hosp[i].y_test, predict(m, s.X_test)))
        # the local model applied at every hospital (each standardises its own rows as in the study)
        local_pooled.append(aucs(scores(m, sites), hosp)[1])
    cen_own, cen_pooled = aucs(central(hosp), hosp)
    return {"fed_own": fed_own, "fed_pooled": fed_pooled, "local_own": local_own, "local_pooled": local_pooled,
            "central_own": cen_own, "central_pooled": cen_pooled,
            "batches": [s.study.local_batch(len(s.y_train)) for s in sites], "n_train": [len(s.y_train) for s in sites],
            "sigmas": [p.noise_multiplier for p in plans]}
