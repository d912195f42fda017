"""Local data: read the hospital's CSV, check it against the study's schema, split, encode.

Nothing here leaves the node. Errors name the column and the row so the data manager can fix the
file; their ``public`` part (what may reach the platform) names the column and the kind of problem
only (hospital_node.errors.DataError).

What training code gets (the loader's contract, ``Dataset``):
  X: float32 [n, study.n_features], the encoded inputs (fedproto.schema.encoded_columns order);
  y: binary_classification -> float32 {0, 1} [n]; regression -> float32 [n];
     multiclass_classification -> int64 class index [n] in the order of the label's classes;
     survival -> float32 [n, 2] with columns (time, event), time > 0, event 0/1.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedproto import preprocessing
from fedproto.evaluation import holdout_rows
from fedproto.schema import label_columns, required_columns
from fedproto.study import StudyConfig

from .encoding import encode, local_constants
from .errors import DataError

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}
MISSING_TOKENS = {"", "nan", "na", "n/a", "null", "none"}


@dataclass
class Dataset:
    """Encoded local splits of one study's data (see the module docstring for the types)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    center: np.ndarray  # per raw feature: the standardisation used (NaN for a column that is not scaled)
    scale: np.ndarray
    preprocessing: dict[str, Any] = field(default_factory=dict)  # the study's shared document (fedproto.preprocessing)

    @property
    def n_train(self) -> int:
        return int(len(self.y_train))

    @property
    def n_test(self) -> int:
        return int(len(self.y_test))


def _where(column: str, row: int) -> str:
    return f"column {column!r}, row {row} (line {row + 1} of the file)"


def is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING_TOKENS


def _boolean(v: str, value: str, column: str, row: int, what: str = "a value") -> float:
    if v.lower() in _TRUE:
        return 1.0
    if v.lower() in _FALSE:
        return 0.0
    raise DataError(f"value {value!r} in {_where(column, row)} is not boolean: use 0 or 1",
                    public=f"column {column!r}: {what} is not boolean (0 or 1)")


def _number(v: str, value: str, column: str, row: int, integer: bool = False) -> float:
    try:
        x = float(v)
    except ValueError:
        raise DataError(f"value {value!r} in {_where(column, row)} is not numeric",
                        public=f"column {column!r}: a value is not numeric") from None
    if not math.isfinite(x):
        raise DataError(f"value {value!r} in {_where(column, row)} is not finite",
                        public=f"column {column!r}: a value is not finite")
    if integer and x != int(x):
        raise DataError(f"value {value!r} in {_where(column, row)} is not an integer (the schema says int)",
                        public=f"column {column!r}: a value is not an integer (the schema says int)")
    return x


def parse_cell(value: str, feature: dict[str, Any], row: int) -> float:
    """One feature cell as its code: the number (float/int), 0/1 (bool), the level index (ordinal),
    the category index (categorical; len(categories) for "other"), or NaN when missing and the
    schema allows it. ``row`` is the 1-based data row (the header is not counted)."""
    v = value.strip()
    column, ftype = feature["name"], feature["type"]
    if v.lower() in MISSING_TOKENS:
        if feature.get("missing", "error") != "error":
            return math.nan
        raise DataError(f"empty or NaN value in {_where(column, row)}: fill it in, drop the row, or let the schema "
                        "impute it (\"missing\")", public=f"column {column!r}: a value is empty or NaN")
    if ftype == "bool":
        return _boolean(v, value, column, row)
    if ftype == "ordinal":
        try:
            return float(feature["levels"].index(v))
        except ValueError:
            raise DataError(f"value {value!r} in {_where(column, row)} is not one of the declared levels "
                            f"({', '.join(feature['levels'])})",
                            public=f"column {column!r}: a value is not one of the declared levels") from None
    if ftype == "categorical":
        cats = feature["categories"]
        if v in cats:
            return float(cats.index(v))
        if feature.get("other"):
            return float(len(cats))
        raise DataError(f"value {value!r} in {_where(column, row)} is not one of the declared categories "
                        f"({', '.join(cats)}); declare it, or set \"other\": true in the schema",
                        public=f"column {column!r}: a value is not one of the declared categories")
    x = _number(v, value, column, row, integer=ftype == "int")
    if "range" in feature and not feature["range"][0] <= x <= feature["range"][1]:
        lo, hi = feature["range"]
        raise DataError(f"value {value!r} in {_where(column, row)} is outside the declared range [{lo:g}, {hi:g}]: "
                        "correct the value, or widen the schema's range",
                        public=f"column {column!r}: a value is outside the declared range")
    return x


def _label(row: list[str], idx: dict[str, int], schema: dict[str, Any], row_no: int) -> float | tuple[float, float]:
    task, label = schema["task"], schema["label"]
    if task == "survival":
        tcol, ecol = label["time"], label["event"]
        tv, ev = row[idx[tcol]].strip(), row[idx[ecol]].strip()
        if tv.lower() in MISSING_TOKENS:
            raise DataError(f"the survival time in {_where(tcol, row_no)} is missing: every row needs its follow-up time",
                            public=f"time column {tcol!r}: a value is missing")
        t = _number(tv, tv, tcol, row_no)
        if t <= 0:
            raise DataError(f"the survival time {tv!r} in {_where(tcol, row_no)} is not positive: follow-up times must "
                            "be > 0", public=f"time column {tcol!r}: a value is not positive")
        if ev.lower() in MISSING_TOKENS:
            raise DataError(f"the event indicator in {_where(ecol, row_no)} is missing: use 1 (event) or 0 (censored)",
                            public=f"event column {ecol!r}: a value is missing")
        return t, _boolean(ev, ev, ecol, row_no, what="an event indicator")
    name = label["name"]
    lv = row[idx[name]].strip()
    if lv.lower() in MISSING_TOKENS:
        raise DataError(f"the label in {_where(name, row_no)} is missing: drop rows without an outcome",
                        public=f"label column {name!r}: a value is missing")
    if task == "binary_classification":
        if lv.lower() in _TRUE:
            return 1.0
        if lv.lower() in _FALSE:
            return 0.0
        raise DataError(f"label {lv!r} in column {name!r}, row {row_no} (line {row_no + 1} of the file) is not 0 or 1 "
                        "(binary classification)",
                        public=f"label column {name!r}: a value is not 0 or 1 (binary classification)")
    if task == "multiclass_classification":
        classes = label["classes"]
        if lv not in classes:
            raise DataError(f"label {lv!r} in {_where(name, row_no)} is not one of the declared classes "
                            f"({', '.join(classes)})",
                            public=f"label column {name!r}: a value is not one of the declared classes")
        return float(classes.index(lv))
    return _number(lv, lv, name, row_no)


def _labels_array(task: str, y: list) -> np.ndarray:
    if task == "multiclass_classification":
        return np.asarray(y, dtype=np.int64)
    if task == "survival":
        return np.asarray(y, dtype=np.float64).reshape(-1, 2)
    return np.asarray(y, dtype=np.float64)


def load_csv(path: str | Path, schema: dict[str, Any], *, labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` and return (X float64 [n, F] of feature codes in schema order, NaN = missing;
    y as the module docstring says, float64 for the float kinds). ``schema`` is a validated schema.
    Extra columns are ignored; missing columns, bad values and bad labels raise DataError. Without
    ``labels`` (scoring new rows) the label columns are not needed and y is empty."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist: set [data] csv (or the data set's path under "
                        "[datasets]) in the node config",
                        public="the node's data file does not exist")
    feats = schema["features"]
    needed = required_columns(schema) if labels else [f["name"] for f in feats]
    X_rows: list[list[float]] = []
    y: list[Any] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError(f"data file {path} is empty: it needs a header row and data rows",
                                public="the node's data file is empty") from None
            dupes = sorted({c for c in header if header.count(c) > 1 and c in needed})
            if dupes:
                columns = ", ".join(repr(c) for c in dupes)
                raise DataError(f"data file {path} has column(s) {columns} more than once in its header: keep one",
                                public=f"the local data has column(s) {columns} more than once")
            missing = [c for c in needed if c not in header]
            if missing:
                columns = ", ".join(repr(m) for m in missing)
                raise DataError(f"data file {path} has no column(s) {columns} required by the study schema "
                                f"(found: {', '.join(header)})", public=f"the local data has no column(s) {columns}")
            idx = {c: header.index(c) for c in needed}
            for row_no, row in enumerate(reader, start=1):
                if not row or all(not c.strip() for c in row):
                    continue  # blank line
                if len(row) < len(header):
                    raise DataError(f"row {row_no} (line {row_no + 1} of the file) has {len(row)} cells, the header has "
                                    f"{len(header)}", public="a row of the data file has fewer cells than its header")
                X_rows.append([parse_cell(row[idx[f["name"]]], f, row_no) for f in feats])
                if labels:
                    y.append(_label(row, idx, schema, row_no))
    except UnicodeDecodeError:
        raise DataError(f"data file {path} is not UTF-8 text: save it as UTF-8 CSV",
                        public="the node's data file is not UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"data file {path} is not valid CSV: {e}", public="the node's data file is not valid CSV") from None
    if not X_rows:
        raise DataError(f"data file {path} has a header but no data rows", public="the node's data file has no data rows")
    return np.asarray(X_rows, dtype=np.float64).reshape(len(X_rows), len(feats)), _labels_array(schema["task"], y)


def _stratify_on(y: np.ndarray, task: str) -> np.ndarray | None:
    if task in ("binary_classification", "multiclass_classification"):
        return y
    if task == "survival":
        return y[:, 1]
    return None


def split(X: np.ndarray, y: np.ndarray, *, seed: int, task: str, test_size: float | int = 0.2):
    """Train/test split seeded by the study seed (``test_size``: a fraction, or a number of rows;
    0: no test split, every row trains); stratified on the class (classification) or the event
    (survival) when every group has two rows or more."""
    from sklearn.model_selection import train_test_split

    if len(y) < 5:
        raise DataError(f"only {len(y)} data rows: at least 5 are needed to train",
                        public="too few data rows to train (at least 5 are needed)")
    if task == "binary_classification":
        classes = np.unique(y)
        if len(classes) < 2:
            raise DataError(f"the label has only one class ({classes[0]:g}) in the local data: "
                            "binary classification needs both 0 and 1",
                            public="the label has only one class in the local data (binary classification needs both)")
    if not test_size:
        return X, X[:0], y, y[:0]
    strata = _stratify_on(y, task)
    if strata is not None:
        _, counts = np.unique(strata, return_counts=True)
        n_test = test_size if isinstance(test_size, int) else round(test_size * len(y))
        if len(counts) < 2 or counts.min() < 2 or n_test < len(counts) or len(y) - n_test < len(counts):
            strata = None
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, random_state=int(seed) % (2**32), stratify=strata)
    if strata is not None:
        tr, te = _every_group_in_test(tr, te, strata)
    return X[tr], X[te], y[tr], y[te]


def _every_group_in_test(tr: np.ndarray, te: np.ndarray, strata: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A small stratified test split can miss a rare class (its share rounds to 0 rows), and then its
    AUC is undefined: swap one row of each missing class in (the first, in split order) for a row of
    the test's largest class. Same sizes, deterministic."""
    tr, te = tr.copy(), te.copy()
    for g in np.unique(strata):
        if (strata[te] == g).any():
            continue
        values, counts = np.unique(strata[te], return_counts=True)
        big = values[np.argmax(counts)]
        if counts.max() < 2:
            break
        i = int(np.flatnonzero(strata[tr] == g)[0])
        j = int(np.flatnonzero(strata[te] == big)[0])
        tr[i], te[j] = te[j], tr[i]
    return tr, te


def _label_dtype(task: str, y: np.ndarray) -> np.ndarray:
    return y.astype(np.int64) if task == "multiclass_classification" else y.astype(np.float32)


def training_rows(study: StudyConfig, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The raw feature codes and labels of this hospital's training split (the rows ``prepare``
    trains on: the federated statistics are computed over them, never over the held-out rows)."""
    n_test = holdout_rows(len(y), study.evaluation["holdout"])
    X_tr, _, y_tr, _ = split(X, y, seed=study.seed, task=study.task, test_size=n_test)
    return X_tr, y_tr


def prepare(study: StudyConfig, X: np.ndarray, y: np.ndarray, statistics: dict[str, Any] | None = None) -> Dataset:
    """Split and encode already-loaded arrays for ``study``. ``statistics``: the study's global
    statistics (fedproto.statistics.derive), needed when the schema standardises or imputes with
    federated values."""
    n_test = holdout_rows(len(y), study.evaluation["holdout"])
    X_tr, X_te, y_tr, y_te = split(X, y, seed=study.seed, task=study.task, test_size=n_test)
    doc = preprocessing.build(study.schema, statistics)
    local = local_constants(doc, X_tr)
    center = np.full(X.shape[1], np.nan)
    scale = np.full(X.shape[1], np.nan)
    for j, f in enumerate(doc["features"]):
        c, s = local.get(f["name"], (f["center"], f["scale"]))
        if c is not None:
            center[j], scale[j] = c, s
    return Dataset(encode(doc, X_tr, local), _label_dtype(study.task, y_tr), encode(doc, X_te, local),
                   _label_dtype(study.task, y_te), center, scale, doc)


def load_study_data(study: StudyConfig, csv_path: str | Path, statistics: dict[str, Any] | None = None) -> Dataset:
    """Read, validate, split and encode the local data for ``study``."""
    X, y = load_csv(csv_path, study.schema)
    return prepare(study, X, y, statistics)


__all__ = ["Dataset", "MISSING_TOKENS", "is_missing", "label_columns", "load_csv", "load_study_data", "parse_cell",
           "prepare", "split", "training_rows"]
