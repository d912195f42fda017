"""Data schema of a study: which columns a hospital's data must have, and their types."""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import SpecError
from .specs import TASKS

FEATURE_TYPES = ("float", "int", "bool")
LABEL_TYPES = {"binary_classification": "binary", "regression": "float"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .\-]{0,127}$")
MAX_FEATURES = 10_000


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where} must be a finite number, got {value!r}")
    return float(value)


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
    seen: set[str] = set()
    out_feats = []
    for i, f in enumerate(feats):
        if not isinstance(f, dict):
            raise SpecError(f"schema feature #{i} must be an object with 'name' and 'type'")
        name = f.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"schema feature #{i} has an invalid name {name!r}: use letters, digits, _ . - and spaces, "
                            "starting with a letter or _")
        if name in seen:
            raise SpecError(f"schema feature {name!r} appears twice")
        seen.add(name)
        ftype = f.get("type", "float")
        if ftype not in FEATURE_TYPES:
            raise SpecError(f"schema feature {name!r} has type {ftype!r}; use one of {', '.join(FEATURE_TYPES)}")
        extra = set(f) - {"name", "type", "center", "scale"}
        if extra:
            raise SpecError(f"schema feature {name!r} has unknown field(s) {sorted(extra)}")
        item: dict[str, Any] = {"name": name, "type": ftype}
        if ("center" in f) != ("scale" in f):
            raise SpecError(f"schema feature {name!r}: give both 'center' and 'scale' or neither")
        if "center" in f:
            item["center"] = _number(f["center"], f"schema feature {name!r} center")
            item["scale"] = _number(f["scale"], f"schema feature {name!r} scale")
            if item["scale"] <= 0:
                raise SpecError(f"schema feature {name!r} scale must be > 0, got {item['scale']}")
        out_feats.append(item)
    label = schema.get("label")
    if not isinstance(label, dict) or not isinstance(label.get("name"), str) or not _NAME.match(label["name"]):
        raise SpecError("schema 'label' must be an object with a valid 'name' (and 'type')")
    if label["name"] in seen:
        raise SpecError(f"label column {label['name']!r} is also listed as a feature")
    ltype = label.get("type", LABEL_TYPES[task])
    if ltype != LABEL_TYPES[task]:
        raise SpecError(f"label {label['name']!r} has type {ltype!r}, but a {task} study needs {LABEL_TYPES[task]!r}")
    extra = set(schema) - {"task", "features", "label"}
    if extra:
        raise SpecError(f"schema has unknown field(s) {sorted(extra)}")
    return {"task": task, "features": out_feats, "label": {"name": label["name"], "type": ltype}}


def feature_names(schema: dict) -> list[str]:
    return [f["name"] for f in schema["features"]]
