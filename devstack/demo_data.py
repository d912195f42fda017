"""Demo and test data: scikit-learn's breast-cancer set split non-IID across hospitals.

Each hospital gets its own CSV; the platform keeps a held-out test set. The split is non-IID:
hospitals are ordered by tumour size (mean radius), so each sees a different case mix.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABEL = "malignant"


def _col(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


@dataclass
class DemoData:
    feature_names: list[str]
    schema: dict
    hospital_csvs: dict[str, Path]
    hospital_rows: dict[str, int]
    X_test: np.ndarray
    y_test: np.ndarray


def write_csv(path: Path, names: list[str], X: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, LABEL])
        for row, label in zip(X, y):
            w.writerow([*(f"{v:.6g}" for v in row), int(label)])
    tmp.replace(path)


def breast_cancer_split(out_dir: Path, hospitals: list[str], *, seed: int = 7, test_fraction: float = 0.2,
                        mixing: float = 0.3, preprocessing: str = "reference") -> DemoData:
    """``preprocessing``: "reference" (the schema fixes center/scale from the evaluation set) or
    "federated" (the schema declares each feature's range, and the study computes the global
    constants in its statistics round, docs/data.md)."""
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    X = ds.data.astype(np.float64)
    y = (ds.target == 0).astype(np.int64)  # 1 = malignant
    names = [_col(n) for n in ds.feature_names]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test_idx, pool = idx[:n_test], idx[n_test:]
    # Non-IID: order the pool by mean radius, with some random mixing so no site is single-class.
    key = X[pool, 0] + mixing * rng.normal(0, X[pool, 0].std(), len(pool))
    chunks = np.array_split(pool[np.argsort(key)], len(hospitals))
    X_test, y_test = X[test_idx], y[test_idx]
    # Reference normalisation constants the consortium agrees on (from the evaluation set, not
    # from any hospital's data): every site scales features the same way.
    center, scale = X_test.mean(axis=0), X_test.std(axis=0) + 1e-12
    if preprocessing == "federated":
        # Declared bounds, as a data dictionary would give them: 0 to a quarter above the largest value.
        feats = [{"name": n, "type": "float", "range": [0.0, float(f"{hi * 1.25:.3g}")]}
                 for n, hi in zip(names, X.max(axis=0))]
    else:
        feats = [{"name": n, "type": "float", "center": round(float(c), 6), "scale": round(float(s), 6)}
                 for n, c, s in zip(names, center, scale)]
    schema = {"task": "binary_classification", "features": feats, "label": {"name": LABEL, "type": "binary"}}
    csvs, rows = {}, {}
    for name, chunk in zip(hospitals, chunks):
        path = out_dir / _col(name).lower() / "data" / "patients.csv"
        write_csv(path, names, X[chunk], y[chunk])
        csvs[name], rows[name] = path, len(chunk)
    return DemoData(names, schema, csvs, rows, X_test, y_test)
