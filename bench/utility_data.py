"""Public clinical data sets for the utility benchmark, and their non-IID split into hospitals.

Every table ships inside an installed package (scikit-survival 0.28, lifelines 0.30): nothing is
downloaded. Each survival table becomes a binary endpoint "event within a horizon": a row whose
event happened at or before the horizon is 1, a row followed past the horizon is 0, and a row
censored before the horizon (its outcome at the horizon is unknown) is DROPPED, not counted as 0.
Categorical columns become 0/1 or ordinal integers (the node accepts float, int and bool only);
columns with missing values, or that describe the outcome, are left out (listed in ``notes``).

Hospitals: the rows are grouped by a covariate (age bands, or a centre-like variable) into 3 to 5
groups of unequal size; each group is capped at ``max_rows`` (a random subset of a large group),
then split, stratified, into the rows the hospital's node is given (its CSV) and a held-out test
set the node never sees. The pooled test set is the union of the hospitals' test sets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Task:
    """One binary endpoint: features (numeric, one row per patient), label, hospital of each row."""

    name: str
    endpoint: str
    split_by: str
    X: pd.DataFrame
    y: np.ndarray
    group: np.ndarray  # hospital label of each row
    notes: str
    order: tuple[str, ...]  # the hospitals, in covariate order
    max_rows: tuple[int, ...] = ()  # per hospital: a random subset of at most this many rows (a large cohort)


@dataclass(frozen=True)
class Hospital:
    name: str
    X_node: np.ndarray  # what the node's CSV holds (raw, unstandardised)
    y_node: np.ndarray
    X_test: np.ndarray  # held out by the benchmark, never given to the node
    y_test: np.ndarray


def _horizon_label(time: np.ndarray, event: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, label): event at or before the horizon -> 1; followed up to it event-free -> 0;
    censored before it -> dropped."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=bool)
    positive = event & (time <= horizon)
    negative = (time > horizon) | (~event & (time >= horizon))
    return positive | negative, positive.astype(np.float64)


def _binary(series: pd.Series, one: str) -> np.ndarray:
    return (series.astype(str) == one).astype(np.float64).to_numpy()


def _bands(values: np.ndarray, cuts: list[float], names: list[str]) -> np.ndarray:
    return np.asarray(names, dtype=object)[np.digitize(values, cuts)]


def _sksurv(loader: str):
    from sksurv import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(datasets, loader)()


def whas500() -> Task:
    X, y = _sksurv("load_whas500")
    keep, label = _horizon_label(y["lenfol"], y["fstat"], 365.0)
    feats = pd.DataFrame({c: X[c].astype(float) for c in ["age", "bmi", "hr", "sysbp", "diasbp", "los"]})
    for c in ["gender", "cvd", "afb", "sho", "chf", "av3", "miord", "mitype"]:
        feats[c] = X[c].astype(str).astype(float)
    names = ["age<60", "60-71", "72-81", "82+"]
    group = _bands(X["age"].to_numpy(), [60, 72, 82], names)
    return Task("WHAS500", "death within 1 year of the heart attack", "age band (4 hospitals)",
                feats[keep].reset_index(drop=True), label[keep], group[keep],
                "Worcester Heart Attack Study (sksurv.datasets.load_whas500); 14 features; "
                "no row is censored before 365 days", tuple(names))


def gbsg2() -> Task:
    X, y = _sksurv("load_gbsg2")
    keep, label = _horizon_label(y["time"], y["cens"], 3 * 365.0)
    feats = pd.DataFrame({c: X[c].astype(float) for c in ["age", "tsize", "pnodes", "progrec", "estrec"]})
    feats["horTh"] = _binary(X["horTh"], "yes")
    feats["postmeno"] = _binary(X["menostat"], "Post")
    feats["tgrade"] = X["tgrade"].astype(str).map({"I": 1.0, "II": 2.0, "III": 3.0}).to_numpy()
    names = ["age<45", "45-54", "55-64", "65+"]
    group = _bands(X["age"].to_numpy(), [45, 55, 65], names)
    return Task("GBSG2", "recurrence or death within 3 years", "age band (4 hospitals)",
                feats[keep].reset_index(drop=True), label[keep], group[keep],
                "German Breast Cancer Study Group 2 (sksurv.datasets.load_gbsg2); 8 features "
                "(tumour grade as ordinal 1-3); rows censored before 3 years dropped", tuple(names))


def flchain() -> Task:
    X, y = _sksurv("load_flchain")
    keep, label = _horizon_label(y["futime"], y["death"], 10 * 365.25)
    feats = pd.DataFrame({c: X[c].astype(float) for c in ["age", "kappa", "lambda"]})
    feats["male"] = _binary(X["sex"], "M")
    feats["mgus"] = _binary(X["mgus"], "1")
    feats["flc_grp"] = X["flc.grp"].astype(str).astype(float)
    names = ["age<55", "55-61", "62-69", "70-79", "80+"]
    group = _bands(X["age"].to_numpy(), [55, 62, 70, 80], names)
    return Task("FLCHAIN", "death within 10 years", "age band (5 hospitals)",
                feats[keep].reset_index(drop=True), label[keep], group[keep],
                "Serum free light chain cohort (sksurv.datasets.load_flchain); 6 features; creatinine "
                "(missing for 17 %) and chapter (the cause of death) left out; rows censored before 10 years dropped; "
                "each hospital a random subset of its group (100 to 250 rows)", tuple(names), (200, 250, 150, 200, 100))


def rossi() -> Task:
    from lifelines import datasets

    df = datasets.load_rossi()
    keep, label = _horizon_label(df["week"], df["arrest"], 52.0)  # everyone is followed 52 weeks: nothing dropped
    feats = df[["fin", "age", "race", "wexp", "mar", "paro", "prio"]].astype(float)
    names = ["age<21", "21-24", "25+"]
    group = _bands(df["age"].to_numpy(), [21, 25], names)
    return Task("Rossi", "re-arrest within 1 year of release", "age band (3 hospitals)",
                feats[keep].reset_index(drop=True), label[keep], group[keep],
                "Rossi recidivism data (lifelines.datasets.load_rossi); 7 features; everyone is followed "
                "52 weeks (nothing dropped)", tuple(names))


TASKS: dict[str, Callable[[], Task]] = {"whas500": whas500, "gbsg2": gbsg2, "flchain": flchain, "rossi": rossi}

# Node + test rows of the hospitals of flchain_bands, cycled (70-175 node rows each after the 30 % test split).
BAND_ROWS = (100, 250, 150, 200, 120)


def flchain_bands(k: int) -> Task:
    """FLCHAIN split finer, for larger consortia: the rows sorted by age (ties by row order) and cut
    into ``k`` groups of equal count (contiguous age bands, so still non-IID), each hospital a
    random subset of its band of BAND_ROWS[i mod 5] rows (node + test): small hospitals at any k."""
    base = flchain()
    if not 2 <= k <= 40:
        raise ValueError(f"flchain_bands needs 2 to 40 hospitals, got {k}")
    age = base.X["age"].to_numpy()
    rank = np.empty(len(age), dtype=np.int64)
    rank[np.argsort(age, kind="stable")] = np.arange(len(age))
    band = rank * k // len(age)
    lo = [int(age[band == b].min()) for b in range(k)]
    hi = [int(age[band == b].max()) for b in range(k)]
    names = [f"{b + 1:02d}:{lo[b]}-{hi[b]}" for b in range(k)]
    group = np.asarray(names, dtype=object)[band]
    return Task(f"FLCHAIN-{k}", base.endpoint, f"age rank ({k} hospitals)", base.X, base.y, group,
                base.notes.split("; each hospital")[0] + f"; {k} equal-count age bands, each hospital a random "
                f"subset of {min(BAND_ROWS)} to {max(BAND_ROWS)} rows of its band", tuple(names),
                tuple(BAND_ROWS[i % len(BAND_ROWS)] for i in range(k)))


def hospitals(task: Task, *, seed: int, test_fraction: float = 0.3) -> list[Hospital]:
    """Split ``task`` into its hospitals: cap each group at the task's ``max_rows`` (random subset), then
    hold out ``test_fraction`` of it, stratified by the label; the seed draws both."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    X = task.X.to_numpy(dtype=np.float64)
    out = []
    for i, name in enumerate(task.order):
        idx = np.flatnonzero(task.group == name)
        if task.max_rows and len(idx) > task.max_rows[i]:
            idx = np.sort(rng.choice(idx, size=task.max_rows[i], replace=False))
        # stratified by the label, unless a class has a single row (a small subset of a young age band
        # with a rare endpoint, flchain_bands): then a plain random split
        strat = task.y[idx] if np.bincount(task.y[idx].astype(np.int64), minlength=2).min() >= 2 else None
        node, test = train_test_split(idx, test_size=test_fraction, random_state=int(rng.integers(2**31)),
                                      stratify=strat)
        out.append(Hospital(name, X[node], task.y[node], X[test], task.y[test]))
    return out


def describe(task: Task, hosp: list[Hospital]) -> str:
    """One line per hospital: rows given to the node, held-out test rows, event rate."""
    parts = [f"{h.name}: {len(h.y_node)}+{len(h.y_test)} rows, {100 * np.mean(np.r_[h.y_node, h.y_test]):.0f} % events"
             for h in hosp]
    return "; ".join(parts)
