"""Encode feature codes (hospital_node.data.load_csv) into the model's inputs with a study's
preprocessing document (fedproto.preprocessing): impute, one-hot, indicate missing values,
standardise. The same function prepares training rows and the rows ``predict`` scores."""

from __future__ import annotations

from typing import Any

import numpy as np

Constants = dict[str, tuple[float, float]]  # feature name -> (center, scale) of "local" scaling


def local_constants(doc: dict[str, Any], X_codes: np.ndarray) -> Constants:
    """(center, scale) of every "local"-scaled feature from this hospital's own rows (the behaviour
    of schemas without a range or fixed constants); a constant column gets scale 1."""
    out: Constants = {}
    for j, f in enumerate(doc["features"]):
        if f["scaling"] != "local":
            continue
        col = X_codes[:, j]
        col = col[~np.isnan(col)]
        center = float(col.mean()) if col.size else 0.0
        std = float(col.std()) if col.size else 0.0
        out[f["name"]] = (center, std if std > 1e-12 else 1.0)
    return out


def _impute_code(f: dict[str, Any]) -> float:
    """The code of a feature's imputation value (number, 0/1, level or category index)."""
    value = f["impute"]
    if f["type"] == "ordinal":
        return float(f["levels"].index(value))
    if f["type"] == "categorical":
        return float(f["categories"].index(value))
    return float(value)


def encode(doc: dict[str, Any], X_codes: np.ndarray, local: Constants | None = None) -> np.ndarray:
    """float32 [n, len(doc["columns"])] from feature codes [n, len(doc["features"])] (NaN = missing).
    A missing value in a feature that allows none is a programming error here: the loader refuses it."""
    X_codes = np.asarray(X_codes, dtype=np.float64)
    n = X_codes.shape[0]
    blocks: list[np.ndarray] = []
    for j, f in enumerate(doc["features"]):
        raw = X_codes[:, j]
        missing = np.isnan(raw)
        if missing.any():
            if f.get("impute") is None:
                raise ValueError(f"feature {f['name']!r} has missing values but no imputation value")
            raw = np.where(missing, _impute_code(f), raw)
        ftype = f["type"]
        if ftype == "categorical":
            width = len(f["categories"]) + (1 if f.get("other") else 0)
            block = np.zeros((n, width))
            block[np.arange(n), raw.astype(np.int64)] = 1.0
        elif ftype == "ordinal":
            block = (raw / (len(f["levels"]) - 1)).reshape(n, 1)
        elif ftype == "bool":
            block = raw.reshape(n, 1)
        else:
            if f["scaling"] == "local":
                if local is None or f["name"] not in local:
                    raise ValueError(f"feature {f['name']!r} is standardised locally: pass its local constants")
                center, scale = local[f["name"]]
            else:
                center, scale = f["center"], f["scale"]
            block = ((raw - center) / scale).reshape(n, 1)
        blocks.append(block)
        if f.get("missing_indicator"):
            blocks.append(missing.astype(np.float64).reshape(n, 1))
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((n, 0), np.float32)
