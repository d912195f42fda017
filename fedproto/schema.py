"""Data schema of a study: which columns a hospital's data must have, their types, how missing
values are filled in, how each column is encoded for the model, and the label (endpoint).

The schema is JSON (docs/data.md has the whole reference):

    {"task": "binary_classification" | "regression" | "multiclass_classification" | "survival",
     "features": [{"name": "age", "type": "float", "range": [18, 100], "missing": "median",
                   "missing_indicator": true},
                  {"name": "menostat", "type": "categorical", "categories": ["Pre", "Post"]},
                  {"name": "tgrade", "type": "ordinal", "levels": ["I", "II", "III"]}, ...],
     "label": {"name": "status", "type": "binary"}
              | {"name": "y", "type": "float"}
              | {"name": "stage", "type": "class", "classes": ["a", "b", "c"]}
              | {"type": "survival", "time": "time", "event": "cens"},
     "statistics": {"epsilon_share": 0.25, "histogram_bins": 32, "federated": true}}      # optional

``validate_schema`` returns a normalised copy or raises SpecError naming the field. The normal form
leaves the defaults out ("missing": "error", "missing_indicator": false, "other": false), so a
schema written before these fields existed normalises to exactly what it was. The encoded feature
layout (``encoded_columns``) is what a model sees: its width is the model's number of inputs
(``StudyConfig.n_features``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import SpecError
from .specs import TASKS

FEATURE_TYPES = ("float", "int", "bool", "ordinal", "categorical")
LABEL_TYPES = {"binary_classification": "binary", "regression": "float", "multiclass_classification": "class",
               "survival": "survival"}
# How a missing value is filled in, per feature type ("error": a missing value is a data error).
MISSING_STRATEGIES = {
    "float": ("error", "mean", "median", "constant"),
    "int": ("error", "mean", "median", "constant"),
    "bool": ("error", "mode", "constant"),
    "ordinal": ("error", "median", "mode", "constant"),
    "categorical": ("error", "mode", "constant"),
}
# Strategies whose value comes from the federated statistics of the study.
FEDERATED_STRATEGIES = ("mean", "median", "mode")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .\-]{0,127}$")
MAX_FEATURES = 10_000
MAX_LEVELS = 200  # categories of a categorical feature, levels of an ordinal one
MAX_CLASSES = 100
MAX_VALUE_LENGTH = 100
OTHER = "__other__"  # encoded column of undeclared categories (a categorical feature with "other": true)
MISSING_SUFFIX = "__missing"  # encoded column of a missing-value indicator
DEFAULT_EPSILON_SHARE = 0.25
MIN_HISTOGRAM_BINS, MAX_HISTOGRAM_BINS, DEFAULT_HISTOGRAM_BINS = 4, 256, 32
_FEATURE_FIELDS = {"name", "type", "center", "scale", "range", "levels", "categories", "other", "missing",
                   "fill_value", "missing_indicator", "description"}
MAX_DESCRIPTION = 500


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _values(raw: Any, where: str, lo: int, hi: int) -> list[str]:
    """A declared list of category / level / class values: strings (integers are accepted and kept as
    their decimal text), unique, non-empty, at most MAX_VALUE_LENGTH characters each."""
    if not isinstance(raw, list) or not lo <= len(raw) <= hi:
        raise SpecError(f"{where} must be a list of {lo} to {hi} values, got {raw!r}"[:300])
    out = []
    for v in raw:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_VALUE_LENGTH or v != v.strip():
            raise SpecError(f"{where}: each value must be a non-empty string of at most {MAX_VALUE_LENGTH} characters "
                            f"without surrounding spaces, got {v!r}"[:300])
        out.append(v)
    dupes = sorted({v for v in out if out.count(v) > 1})
    if dupes:
        raise SpecError(f"{where} lists {dupes[:5]} more than once")
    return out


def _feature(f: Any, i: int) -> dict[str, Any]:
    if not isinstance(f, dict):
        raise SpecError(f"schema feature #{i} must be an object with 'name' and 'type'")
    name = f.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(f"schema feature #{i} has an invalid name {name!r}: use letters, digits, _ . - and spaces, "
                        "starting with a letter or _")
    ftype = f.get("type", "float")
    if ftype not in FEATURE_TYPES:
        raise SpecError(f"schema feature {name!r} has type {ftype!r}; use one of {', '.join(FEATURE_TYPES)}")
    extra = set(f) - _FEATURE_FIELDS
    if extra:
        raise SpecError(f"schema feature {name!r} has unknown field(s) {sorted(extra)}")
    numeric = ftype in ("float", "int")
    allowed = {"float": {"center", "scale", "range"}, "int": {"center", "scale", "range"}, "bool": set(),
               "ordinal": {"levels"}, "categorical": {"categories", "other"}}[ftype]
    misplaced = sorted((set(f) & {"center", "scale", "range", "levels", "categories", "other"}) - allowed)
    if misplaced:
        raise SpecError(f"schema feature {name!r} of type {ftype} takes no field(s) {misplaced}")
    item: dict[str, Any] = {"name": name, "type": ftype}
    if numeric:
        if ("center" in f) != ("scale" in f):
            raise SpecError(f"schema feature {name!r}: give both 'center' and 'scale' or neither")
        if "center" in f:
            item["center"] = _number(f["center"], f"schema feature {name!r} center")
            item["scale"] = _number(f["scale"], f"schema feature {name!r} scale")
            if item["scale"] <= 0:
                raise SpecError(f"schema feature {name!r} scale must be > 0, got {item['scale']}")
        if "range" in f:
            r = f["range"]
            if not isinstance(r, list) or len(r) != 2:
                raise SpecError(f"schema feature {name!r} range must be [low, high], got {r!r}")
            lo, hi = (_number(v, f"schema feature {name!r} range") for v in r)
            if not lo < hi:
                raise SpecError(f"schema feature {name!r} range [{lo:g}, {hi:g}]: low must be below high")
            item["range"] = [lo, hi]
    elif ftype == "ordinal":
        item["levels"] = _values(f.get("levels"), f"schema feature {name!r} levels", 2, MAX_LEVELS)
    elif ftype == "categorical":
        item["categories"] = _values(f.get("categories"), f"schema feature {name!r} categories", 1, MAX_LEVELS)
        other = f.get("other", False)
        if not isinstance(other, bool):
            raise SpecError(f"schema feature {name!r} other must be true or false, got {other!r}")
        if other:
            item["other"] = True
    _missing(f, item)
    if "description" in f:
        d = f["description"]
        if not isinstance(d, str) or len(d) > MAX_DESCRIPTION:
            raise SpecError(f"schema feature {name!r} description must be a string of at most {MAX_DESCRIPTION} characters")
        item["description"] = d
    return item


def _missing(f: dict[str, Any], item: dict[str, Any]) -> None:
    name, ftype = item["name"], item["type"]
    strategy = f.get("missing", "error")
    if strategy not in MISSING_STRATEGIES[ftype]:
        raise SpecError(f"schema feature {name!r} missing {strategy!r} is not possible for a {ftype} feature; use one "
                        f"of {', '.join(MISSING_STRATEGIES[ftype])}")
    if strategy != "error":
        item["missing"] = strategy
    if strategy in ("mean", "median") and ftype in ("float", "int") and "range" not in item:
        raise SpecError(f"schema feature {name!r}: {strategy} imputation needs a declared 'range' [low, high] (the "
                        "bounds the federated statistics clip values to, which bounds each patient's influence)")
    if strategy == "constant":
        if "fill_value" not in f:
            raise SpecError(f"schema feature {name!r}: missing \"constant\" needs a 'fill_value'")
        item["fill_value"] = _fill_value(f["fill_value"], item)
    elif "fill_value" in f:
        raise SpecError(f"schema feature {name!r}: 'fill_value' is only used with missing \"constant\"")
    indicator = f.get("missing_indicator", False)
    if not isinstance(indicator, bool):
        raise SpecError(f"schema feature {name!r} missing_indicator must be true or false, got {indicator!r}")
    if indicator and strategy == "error":
        raise SpecError(f"schema feature {name!r}: a missing_indicator needs missing values to be allowed; set "
                        f"'missing' to one of {', '.join(MISSING_STRATEGIES[ftype][1:])}")
    if indicator:
        item["missing_indicator"] = True


def _fill_value(v: Any, item: dict[str, Any]) -> Any:
    name, ftype = item["name"], item["type"]
    if ftype in ("float", "int"):
        x = _number(v, f"schema feature {name!r} fill_value")
        if ftype == "int" and not x.is_integer():
            raise SpecError(f"schema feature {name!r} fill_value must be an integer, got {v!r}")
        return x
    if ftype == "bool":
        if v not in (0, 1) or isinstance(v, float):
            raise SpecError(f"schema feature {name!r} fill_value must be 0 or 1, got {v!r}")
        return int(v)
    declared = item["levels"] if ftype == "ordinal" else item["categories"]
    if str(v) not in declared or isinstance(v, bool):
        raise SpecError(f"schema feature {name!r} fill_value {v!r} is not one of its declared values")
    return str(v)


def _label(label: Any, task: str, feature_names: set[str]) -> dict[str, Any]:
    want = LABEL_TYPES[task]
    if not isinstance(label, dict):
        raise SpecError("schema 'label' must be an object such as {\"name\": \"outcome\", \"type\": \""
                        f"{want}\"}}")
    ltype = label.get("type", want)
    if ltype != want:
        raise SpecError(f"label has type {ltype!r}, but a {task} study needs {want!r}")
    if task == "survival":
        extra = set(label) - {"type", "time", "event"}
        if extra:
            raise SpecError(f"a survival label has 'time' and 'event' (column names), not {sorted(extra)}")
        out: dict[str, Any] = {"type": ltype}
        for key in ("time", "event"):
            col = label.get(key)
            if not isinstance(col, str) or not _NAME.match(col):
                raise SpecError(f"a survival label needs '{key}': the name of the {key} column, got {col!r}")
            out[key] = col
        if out["time"] == out["event"]:
            raise SpecError("a survival label's time and event columns must be different columns")
    else:
        allowed = {"name", "type", "classes"} if task == "multiclass_classification" else {"name", "type"}
        extra = set(label) - allowed
        if extra:
            raise SpecError(f"schema label has unknown field(s) {sorted(extra)}")
        name = label.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError("schema 'label' must be an object with a valid 'name' (and 'type')")
        out = {"name": name, "type": ltype}
        if task == "multiclass_classification":
            out["classes"] = _values(label.get("classes"), f"label {name!r} classes", 2, MAX_CLASSES)
    clash = [c for c in label_columns({"task": task, "label": out}) if c in feature_names]
    if clash:
        raise SpecError(f"label column {clash[0]!r} is also listed as a feature")
    return out


def _statistics(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError('schema statistics must be an object such as {"epsilon_share": 0.25, "histogram_bins": 32}')
    extra = set(raw) - {"epsilon_share", "histogram_bins", "federated"}
    if extra:
        raise SpecError(f"schema statistics has unknown field(s) {sorted(extra)}; it takes epsilon_share, histogram_bins, "
                        "federated")
    federated = raw.get("federated", True)
    if not isinstance(federated, bool):
        raise SpecError(f"schema statistics federated must be true or false, got {federated!r}")
    share = raw.get("epsilon_share", DEFAULT_EPSILON_SHARE)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share <= 0.9:
        raise SpecError(f"schema statistics epsilon_share must be a number in (0, 0.9] (the part of each hospital's "
                        f"epsilon the federated statistics may cost), got {share!r}")
    bins = raw.get("histogram_bins", DEFAULT_HISTOGRAM_BINS)
    if isinstance(bins, bool) or not isinstance(bins, int) or not MIN_HISTOGRAM_BINS <= bins <= MAX_HISTOGRAM_BINS:
        raise SpecError(f"schema statistics histogram_bins must be an integer from {MIN_HISTOGRAM_BINS} to "
                        f"{MAX_HISTOGRAM_BINS}, got {bins!r}")
    out: dict[str, Any] = {"epsilon_share": float(share), "histogram_bins": bins}
    if not federated:  # the normal form leaves the default (true) out
        out["federated"] = False
    return out


def validate_schema(schema: Any) -> dict:
    """Return a normalised copy of a data schema or raise SpecError naming the bad field."""
    if not isinstance(schema, dict):
        raise SpecError('data schema must be a JSON object with "task", "features" and "label"')
    task = schema.get("task")
    if task not in TASKS:
        raise SpecError(f"schema task {task!r} is not supported; use one of {', '.join(TASKS)}")
    feats = schema.get("features")
    if not isinstance(feats, list) or not feats:
        raise SpecError("schema 'features' must be a non-empty list of {name, type} objects")
    if len(feats) > MAX_FEATURES:
        raise SpecError(f"schema has {len(feats)} features; at most {MAX_FEATURES} are supported")
    out_feats = []
    seen: set[str] = set()
    for i, f in enumerate(feats):
        item = _feature(f, i)
        if item["name"] in seen:
            raise SpecError(f"schema feature {item['name']!r} appears twice")
        seen.add(item["name"])
        out_feats.append(item)
    extra = set(schema) - {"task", "features", "label", "statistics"}
    if extra:
        raise SpecError(f"schema has unknown field(s) {sorted(extra)}")
    out = {"task": task, "features": out_feats, "label": _label(schema.get("label"), task, seen)}
    if len(encoded_columns(out)) > MAX_FEATURES:
        raise SpecError(f"the schema encodes to {len(encoded_columns(out))} model inputs (one per category); at most "
                        f"{MAX_FEATURES} are supported")
    if "statistics" in schema or needs_statistics(out):
        out["statistics"] = _statistics(schema.get("statistics"))
    if not federated_statistics(out):
        bad = [f["name"] for f in out_feats if f.get("missing") in FEDERATED_STRATEGIES]
        if bad:
            raise SpecError(f"schema statistics federated is false, but feature(s) {bad[:5]} impute a missing value with "
                            "the federated mean, median or mode: use missing \"constant\" or allow the statistics round")
    return out


# ----------------------------------------------------------------------------- reading a schema

def feature_names(schema: dict) -> list[str]:
    """The input columns, in schema order (the raw columns a hospital's file must have)."""
    return [f["name"] for f in schema["features"]]


def label_columns(schema: dict) -> list[str]:
    """The label's columns: [name], or [time, event] for a survival endpoint."""
    label = schema["label"]
    return [label["time"], label["event"]] if schema["task"] == "survival" else [label["name"]]


def required_columns(schema: dict) -> list[str]:
    return [*feature_names(schema), *label_columns(schema)]


def label_classes(schema: dict) -> list[str] | None:
    """The declared classes of a multi-class label, in the order of the model's outputs; else None."""
    return list(schema["label"]["classes"]) if schema["task"] == "multiclass_classification" else None


def n_outputs(schema: dict) -> int:
    """Outputs of the model: one per class for multi-class classification, else one."""
    classes = label_classes(schema)
    return len(classes) if classes else 1


def scaling(feature: dict, federated: bool = True) -> str:
    """How a feature is standardised: "fixed" (the schema's center/scale), "federated" (the study's
    global statistics: needs a declared range; the default), "local" (each hospital's own
    statistics: a feature without range or fixed constants, or any when the schema opts out of the
    statistics round with ``"statistics": {"federated": false}``, ``federated`` False here; not
    recommended: hospitals then train in different coordinate systems), or "none" (bool, ordinal
    and categorical columns keep their 0/1 or level encoding)."""
    if feature["type"] not in ("float", "int"):
        return "none"
    if "center" in feature:
        return "fixed"
    return "federated" if "range" in feature and federated else "local"


def federated_statistics(schema: dict) -> bool:
    """False when the schema opts out of the statistics round (``"statistics": {"federated": false}``)."""
    return bool(schema.get("statistics", {}).get("federated", True))


def feature_scaling(schema: dict, feature: dict) -> str:
    """``scaling`` of one feature of ``schema`` (taking the schema's opt-out into account)."""
    return scaling(feature, federated_statistics(schema))


def needs_statistics(schema: dict) -> bool:
    """True when the study must compute federated statistics before training (a statistics round,
    round 0): some feature is standardised or imputed with global values, and the schema does not
    opt out."""
    if not schema.get("statistics", {}).get("federated", True):
        return False
    return any(scaling(f) == "federated" or f.get("missing") in FEDERATED_STRATEGIES for f in schema["features"])


def feature_columns(feature: dict) -> list[str]:
    """The encoded columns of one feature, in order."""
    name = feature["name"]
    if feature["type"] == "categorical":
        cols = [f"{name}={c}" for c in feature["categories"]] + ([f"{name}={OTHER}"] if feature.get("other") else [])
    else:
        cols = [name]
    if feature.get("missing_indicator"):
        cols.append(name + MISSING_SUFFIX)
    return cols


def encoded_columns(schema: dict) -> list[str]:
    """The model's inputs, in order: each feature's encoded columns in schema order (a numeric,
    bool or ordinal feature is one column, a categorical one is one column per category, plus an
    "other" column if declared; a missing-value indicator follows its feature)."""
    return [c for f in schema["features"] for c in feature_columns(f)]


def n_inputs(schema: dict) -> int:
    return len(encoded_columns(schema))


__all__ = ["FEATURE_TYPES", "LABEL_TYPES", "MISSING_STRATEGIES", "MISSING_SUFFIX", "OTHER", "encoded_columns",
           "feature_columns", "feature_names", "label_classes", "label_columns", "n_inputs", "n_outputs",
           "federated_statistics", "feature_scaling", "needs_statistics", "required_columns", "scaling", "validate_schema"]
