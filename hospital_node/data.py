"""Local data: read the hospital's CSV, check it against the study's schema, split, standardise.

Nothing here leaves the node. Errors name the column and the row so the data
manager can fix the file.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedproto.schema import feature_names
from fedproto.study import StudyConfig

from .errors import DataError

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


@dataclass
class Dataset:
    """Standardised local splits of one study's data (float32 features)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    center: np.ndarray
    scale: np.ndarray

    @property
    def n_train(self) -> int:
        return int(len(self.y_train))

    @property
    def n_test(self) -> int:
        return int(len(self.y_test))


def _parse(value: str, ftype: str, column: str, row: int) -> float:
    """Parse one cell; ``row`` is the 1-based data row (the header is not counted)."""
    v = value.strip()
    where = f"column {column!r}, row {row} (line {row + 1} of the file)"
    if v == "" or v.lower() in ("nan", "na", "null", "none"):
        raise DataError(f"empty or NaN value in {where}: fill it in or drop the row",
                        public=f"column {column!r}: a value is empty or NaN")
    if ftype == "bool":
        if v.lower() in _TRUE:
            return 1.0
        if v.lower() in _FALSE:
            return 0.0
        raise DataError(f"value {value!r} in {where} is not boolean: use 0 or 1",
                        public=f"column {column!r}: a value is not boolean (0 or 1)")
    try:
        x = float(v)
    except ValueError:
        raise DataError(f"value {value!r} in {where} is not numeric",
                        public=f"column {column!r}: a value is not numeric") from None
    if not math.isfinite(x):
        raise DataError(f"value {value!r} in {where} is not finite", public=f"column {column!r}: a value is not finite")
    if ftype == "int" and x != int(x):
        raise DataError(f"value {value!r} in {where} is not an integer (the schema says int)",
                        public=f"column {column!r}: a value is not an integer (the schema says int)")
    return x


def load_csv(path: str | Path, schema: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` and return (X float64 [n, F] in schema order, y float64 [n]).

    ``schema`` is a validated schema (``StudyConfig.schema``). Extra columns are ignored; missing
    columns, bad values and bad labels raise DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist: set [data] csv in the node config to the study's CSV",
                        public="the node's data file does not exist")
    names = feature_names(schema)
    label = schema["label"]["name"]
    types = {f["name"]: f["type"] for f in schema["features"]}
    X_rows: list[list[float]] = []
    y: list[float] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"data file {path} is empty: it needs a header row and data rows",
                            public="the node's data file is empty") from None
        header = [h.strip() for h in header]
        missing = [c for c in [*names, label] if c not in header]
        if missing:
            columns = ", ".join(repr(m) for m in missing)
            raise DataError(f"data file {path} has no column(s) {columns} required by the study schema "
                            f"(found: {', '.join(header)})", public=f"the local data has no column(s) {columns}")
        idx = {c: header.index(c) for c in [*names, label]}
        for row_no, row in enumerate(reader, start=1):
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            if len(row) < len(header):
                raise DataError(f"row {row_no} (line {row_no + 1} of the file) has {len(row)} cells, "
                                f"the header has {len(header)}", public="a row of the data file has fewer cells than its header")
            X_rows.append([_parse(row[idx[c]], types[c], c, row_no) for c in names])
            if schema["task"] == "binary_classification":
                lv = row[idx[label]].strip()
                if lv.lower() in _TRUE:
                    y.append(1.0)
                elif lv.lower() in _FALSE:
                    y.append(0.0)
                else:
                    raise DataError(f"label {lv!r} in column {label!r}, row {row_no} (line {row_no + 1} of the "
                                    f"file) is not 0 or 1 (binary classification)",
                                    public=f"label column {label!r}: a value is not 0 or 1 (binary classification)")
            else:
                y.append(_parse(row[idx[label]], "float", label, row_no))
    if not y:
        raise DataError(f"data file {path} has a header but no data rows", public="the node's data file has no data rows")
    return np.asarray(X_rows, dtype=np.float64), np.asarray(y, dtype=np.float64)


def split(X: np.ndarray, y: np.ndarray, *, seed: int, task: str, test_size: float = 0.2):
    """80/20 split seeded by the study seed; stratified for classification when possible."""
    from sklearn.model_selection import train_test_split

    if len(y) < 5:
        raise DataError(f"only {len(y)} data rows: at least 5 are needed for a train/test split",
                        public="too few data rows for a train/test split (at least 5 are needed)")
    stratify = None
    if task == "binary_classification":
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise DataError(f"the label has only one class ({classes[0]:g}) in the local data: "
                            "binary classification needs both 0 and 1",
                            public="the label has only one class in the local data (binary classification needs both)")
        if counts.min() >= 2:
            stratify = y
    return train_test_split(X, y, test_size=test_size, random_state=int(seed) % (2**32), stratify=stratify)


def standardisation(schema: dict[str, Any], X_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (center, scale): the schema's reference constants, else local train statistics."""
    center = X_train.mean(axis=0)
    scale = X_train.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    for j, f in enumerate(schema["features"]):
        if "center" in f:
            center[j], scale[j] = f["center"], f["scale"]
    return center, scale


def prepare(study: StudyConfig, X: np.ndarray, y: np.ndarray) -> Dataset:
    """Split + standardise already-loaded arrays for ``study``."""
    X_tr, X_te, y_tr, y_te = split(X, y, seed=study.seed, task=study.task)
    center, scale = standardisation(study.schema, X_tr)
    f32 = np.float32
    return Dataset(((X_tr - center) / scale).astype(f32), y_tr.astype(f32),
                   ((X_te - center) / scale).astype(f32), y_te.astype(f32), center, scale)


def load_study_data(study: StudyConfig, csv_path: str | Path) -> Dataset:
    """Read, validate, split and standardise the local data for ``study``."""
    X, y = load_csv(csv_path, study.schema)
    return prepare(study, X, y)
