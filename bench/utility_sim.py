"""One study simulated the way the platform runs it, with the node's own code, in one process.

Each hospital prepares its data as the node does (hospital_node.data: the node's 80/20 local split
seeded by the study seed, then standardisation with the schema's reference constants when the
schema has them, else the hospital's own statistics), plans its noise with
hospital_node.trainer.plan_noise and trains each round's job with hospital_node.trainer.train_job
(DP-SGD, grad_sample_mode "fused"). The global model moves by the aggregate of the round's updates,
computed with the study codec's own quantisation (fedproto.codec: weight min(n, cap)/cap, clip to
update_clip, stochastic rounding to quant_bits, then exactly the decode arithmetic of
decrypt_aggregate): the encrypted sum is exact on integers, so this is the number the nodes
decrypt, without the encryption (tests/fedproto/test_codec.py checks the round trip within one
quantisation step).

A ``Setup`` is a set of study settings plus the node VARIANTS this benchmark measures (none of them
is node behaviour today): ``batch="auto"`` (each hospital's batch from its own declared size),
``init="zero"`` (convex model starts from zero, not the seeded random model), ``local_split=False``
(the node trains on all its rows instead of holding out 20 %).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from utility_data import Hospital

from fedproto.codec import DEFAULT_CODEC, get_codec
from fedproto.study import StudyConfig, validate_study
from hospital_node import data as node_data
from hospital_node.networks import initial_model
from hospital_node.trainer import _noise_multiplier as noise_multiplier
from hospital_node.trainer import (
    apply_update,
    dp_train,
    epsilon_of,
    plan_noise,
    predict,
    sample_rate_for,
    steps_per_epoch,
    train_job,
    train_local_only,
)

DELTA = 1e-5


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    rounds: int
    local_epochs: int
    batch: int | str  # a fixed batch size, or "auto": each hospital's from its size (auto_batch)
    learning_rate: float
    clip_norm: float = 1.0
    standardise: str = "local"  # "local": each hospital's own statistics; "global": reference constants in the schema
    init: str = "seeded"  # "seeded": the node's initial_model (seeded random); "zero": all weights 0
    local_split: bool = True  # the node holds out 20 % of its rows for a local test split


SETUPS = {
    "standard": Setup("standard", 'portal "Standard" preset, CSV header (local standardisation)',
                      rounds=10, local_epochs=2, batch=64, learning_rate=0.1),
    "demo": Setup("demo", "demo settings + reference constants in the schema",
                  rounds=5, local_epochs=5, batch=16, learning_rate=0.1, standardise="global"),
    "zero": Setup("zero", "variant: demo + zero initial weights + no 20 % local split",
                  rounds=5, local_epochs=5, batch=16, learning_rate=0.1, standardise="global", init="zero",
                  local_split=False),
    "auto": Setup("auto", "variant: global constants, zero init, no 20 % split, full batch (b = n), lr 2",
                  rounds=10, local_epochs=1, batch="auto", learning_rate=2.0, standardise="global", init="zero",
                  local_split=False),
}


def auto_batch(n_train: int) -> int:
    """A batch from the hospital's declared size alone (no data, no budget): all its rows, i.e. noisy
    full-batch gradient descent. The noise added to a step's mean gradient is sigma * clip / batch, so
    at these sizes the largest batch buys the most signal per unit of epsilon (docs/utility.md)."""
    return int(n_train)


def study_for(setup: Setup, *, n_features: int, epsilon: float, seed: int, n_hospitals: int,
              center: np.ndarray | None) -> StudyConfig:
    feats = [{"name": f"x{j}", "type": "float"} for j in range(n_features)]
    if center is not None:  # reference constants: every hospital standardises identically
        for f, (c, s) in zip(feats, center):
            f.update(center=float(c), scale=float(s))
    batch = setup.batch if isinstance(setup.batch, int) else 64  # "auto": replaced per hospital
    return validate_study({
        "name": f"utility {setup.key}", "schema": {"task": "binary_classification", "features": feats,
                                                   "label": {"name": "y"}},
        "model": {"type": "logistic_regression"}, "rounds": setup.rounds, "local_epochs": setup.local_epochs,
        "batch_size": batch, "learning_rate": setup.learning_rate,
        "privacy": {"epsilon": epsilon, "delta": DELTA, "clip_norm": setup.clip_norm},
        "encryption": {"codec": DEFAULT_CODEC}, "quorum": n_hospitals, "round_deadline_s": 600, "seed": seed,
    }, n_hospitals=n_hospitals)


@dataclass
class Site:
    """One hospital as its node sees it: its study (batch may differ under "auto") and standardised splits."""

    study: StudyConfig
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray  # the benchmark's held-out rows, standardised as the node standardises
    y_test: np.ndarray


def prepare_sites(setup: Setup, hosp: list[Hospital], *, epsilon: float, seed: int) -> list[Site]:
    center = None
    if setup.standardise == "global":
        # what federated preprocessing would give: the mean and s.d. of all hospitals' rows
        pooled = np.vstack([h.X_node for h in hosp])
        sd = pooled.std(axis=0)
        center = np.c_[pooled.mean(axis=0), np.where(sd > 1e-12, sd, 1.0)]
    study = study_for(setup, n_features=hosp[0].X_node.shape[1], epsilon=epsilon, seed=seed,
                      n_hospitals=len(hosp), center=center)
    sites = []
    for h in hosp:
        if setup.local_split:
            X_tr, _, y_tr, _ = node_data.split(h.X_node, h.y_node, seed=study.seed, task=study.task)
        else:
            X_tr, y_tr = h.X_node, h.y_node
        c, s = node_data.standardisation(study.schema, X_tr)
        st = study if setup.batch != "auto" else dataclasses.replace(study, batch_size=auto_batch(len(y_tr)))
        f32 = np.float32
        sites.append(Site(st, ((X_tr - c) / s).astype(f32), y_tr.astype(f32), ((h.X_test - c) / s).astype(f32),
                          h.y_test))
    return sites


def start_model(setup: Setup, study: StudyConfig) -> torch.nn.Module:
    model = initial_model(study)
    if setup.init == "zero":
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return model


def aggregate(updates: list[np.ndarray], n_samples: list[int], enc: dict, rng: np.random.Generator) -> np.ndarray:
    """The mean update the nodes decrypt: the codec's quantisation, summed, decoded as decrypt_aggregate does."""
    codec = get_codec(enc["codec"])
    enc = codec.validate_config(enc)
    qs, wnums = zip(*(codec.quantise(enc, u, n, rng) for u, n in zip(updates, n_samples)))
    c = enc["update_clip"]
    step = 2.0 * c / ((1 << enc["quant_bits"]) - 1)
    sums = np.sum([q.astype(np.float64) for q in qs], axis=0)
    return (sums * step - len(updates) * c) * (enc["weight_cap_samples"] / sum(wnums))


def federated(setup: Setup, sites: list[Site], *, seed: int) -> torch.nn.Module:
    base = sites[0].study
    model = start_model(setup, base)
    plans = [plan_noise(s.study, len(s.y_train)) for s in sites]
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
    return model


def local_only(setup: Setup, site: Site, *, seed: int) -> torch.nn.Module:
    """The node's train_local_only; from a zero start under init="zero" (the same run, another start)."""
    st = site.study
    if setup.init == "seeded":
        return train_local_only(st, site.X_train, site.y_train, seed=seed)
    epochs = st.rounds * st.local_epochs
    n = len(site.y_train)
    sigma = noise_multiplier(st.privacy.epsilon, DELTA, sample_rate_for(n, st.batch_size),
                             epochs * steps_per_epoch(n, st.batch_size), st.privacy.accountant)
    trained, _ = dp_train(start_model(setup, st), site.X_train, site.y_train, task=st.task, epochs=epochs,
                          batch_size=st.batch_size, learning_rate=st.learning_rate, noise_multiplier=sigma,
                          clip_norm=st.privacy.clip_norm, seed=seed)
    return trained


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
    fed_own, fed_pooled = aucs(scores(federated(setup, sites, seed=seed), sites), hosp)
    local_own, local_pooled = [], []
    for i, s in enumerate(sites):
        m = local_only(setup, s, seed=seed * 1000 + 900 + i)
        local_own.append(auc(hosp[i].y_test, predict(m, s.X_test)))
        # the local model applied at every hospital (each standardises its own rows as in the study)
        local_pooled.append(aucs(scores(m, sites), hosp)[1])
    cen_own, cen_pooled = aucs(central(hosp), hosp)
    return {"fed_own": fed_own, "fed_pooled": fed_pooled, "local_own": local_own, "local_pooled": local_pooled,
            "central_own": cen_own, "central_pooled": cen_pooled,
            "batches": [s.study.batch_size for s in sites], "n_train": [len(s.y_train) for s in sites]}
