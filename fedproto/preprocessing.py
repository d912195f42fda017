"""A study's preprocessing: how a raw row becomes the model's input, as one JSON document.

Every hospital of a study builds the same document from the schema and the study's global
(federated) statistics, encodes its rows with it, and the released model carries it (in the
safetensors metadata, key ``fedproto.preprocessing``), so ``python -m hospital_node predict``
scores new raw rows exactly as training saw them. The format is documented in docs/data.md:

    {"format": "fedproto-preprocessing-1", "task": ..., "label": <the schema's label>,
     "features": [{<the schema's feature>, "scaling": "fixed"|"federated"|"local"|"none",
                   "center": float|null, "scale": float|null, "impute": value|null}, ...],
     "columns": [<encoded column names, the model's inputs in order>],
     "output": "<what the model's output means>",
     "statistics": {"source": "federated"|"none", ...global summary...}}

A feature's encoding: float/int: (value - center) / scale; bool: 0/1; ordinal: level index /
(levels - 1); categorical: one-hot over its categories (+ "other"); a missing value is replaced
by ``impute`` first, and a missing-value indicator column (1 = was missing) follows when the
schema asks for one. "local" scaling (schemas without a range or fixed constants, written before
federated statistics existed) standardises with each hospital's own statistics: its center and
scale are null here, because they differ between hospitals.

Pure Python: no numpy or torch needed to read or check a document.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .errors import SpecError
from .schema import encoded_columns, feature_scaling, federated_statistics, label_classes, scaling, validate_schema

FORMAT = "fedproto-preprocessing-1"
METADATA_KEY = "fedproto.preprocessing"
MODEL_KEY = "fedproto.model"

OUTPUTS = {
    "binary_classification": "logit of P(label = 1); predict reports the probability sigmoid(logit)",
    "multiclass_classification": "one logit per class, in the order of the label's classes; predict reports "
                                 "softmax probabilities",
    "survival": "log relative hazard (Cox risk score): higher means an earlier event",
    "regression": "the predicted value of the label, in its own units",
}


def _impute(feature: dict[str, Any], stats: dict[str, Any] | None) -> Any:
    """The value a missing cell becomes (None: missing values are an error for this feature)."""
    strategy = feature.get("missing", "error")
    if strategy == "error":
        return None
    if strategy == "constant":
        return feature["fill_value"]
    if stats is None:
        raise SpecError(f"feature {feature['name']!r} imputes the federated {strategy}, but the study has no "
                        "federated statistics yet")
    value = stats.get(strategy)
    if value is None:
        raise SpecError(f"the federated statistics have no {strategy} of feature {feature['name']!r}")
    return value


def build(schema: dict[str, Any], statistics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preprocessing document of ``schema`` with the study's global statistics (as
    fedproto.statistics.derive returns them; None when the study needs none)."""
    schema = validate_schema(schema)
    per_feature = (statistics or {}).get("features", {})
    feats = []
    for f in schema["features"]:
        how = feature_scaling(schema, f)
        st = per_feature.get(f["name"]) if statistics is not None else None
        entry = {**copy.deepcopy(f), "scaling": how, "center": None, "scale": None}
        if how == "fixed":
            entry["center"], entry["scale"] = f["center"], f["scale"]
        elif how == "federated":
            if st is None:
                raise SpecError(f"feature {f['name']!r} is standardised with the federated statistics, which the "
                                "study has not computed yet")
            entry["center"], entry["scale"] = float(st["mean"]), float(st["std"])
        entry["impute"] = _impute(f, st)
        feats.append(entry)
    summary: dict[str, Any] = {"source": "none"}
    if not federated_statistics(schema):
        summary["federated"] = False  # the schema opted out of the statistics round
    if statistics is not None:
        summary = {"source": "federated", **{k: copy.deepcopy(v) for k, v in statistics.items() if k != "features"},
                   "missing_rate": {name: st.get("missing_rate") for name, st in per_feature.items()
                                    if st.get("missing_rate") is not None}}
    return {"format": FORMAT, "task": schema["task"], "label": copy.deepcopy(schema["label"]), "features": feats,
            "columns": encoded_columns(schema), "output": OUTPUTS[schema["task"]], "statistics": summary}


def schema_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The data schema a preprocessing document was built from (validated)."""
    keep = {"name", "type", "center", "scale", "range", "levels", "categories", "other", "missing", "fill_value",
            "missing_indicator", "description"}
    # center/scale belong to the schema only for "fixed" scaling; otherwise they are derived here
    feats = [{k: v for k, v in f.items() if k in keep and (k not in ("center", "scale") or f.get("scaling") == "fixed")}
             for f in doc["features"]]
    return validate_schema({"task": doc["task"], "features": feats, "label": doc["label"]})


def check(doc: Any) -> dict[str, Any]:
    """Validate a preprocessing document read from a model file (it may be damaged or forged):
    return it, or raise SpecError saying what is wrong."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise SpecError(f"not a preprocessing document of format {FORMAT!r} (found {found!r})")
    missing = [k for k in ("task", "label", "features", "columns", "output") if k not in doc]
    if missing or not isinstance(doc["features"], list):
        raise SpecError(f"the preprocessing document lacks {missing or ['features']}")
    schema = schema_of(doc)
    if doc["columns"] != encoded_columns(schema):
        raise SpecError("the preprocessing document's columns do not match its features")
    stats = doc.get("statistics")
    federated = not (isinstance(stats, dict) and stats.get("federated") is False)
    for f, declared in zip(doc["features"], schema["features"]):
        name, how = f["name"], f.get("scaling")
        want = scaling(declared, federated)
        if how != want:
            raise SpecError(f"feature {name!r}: scaling {how!r} does not match its schema ({want!r})")
        if how in ("fixed", "federated"):
            for key in ("center", "scale"):
                v = f.get(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise SpecError(f"feature {name!r}: {key} must be a finite number, got {v!r}")
            if f["scale"] <= 0:
                raise SpecError(f"feature {name!r}: scale must be > 0")
        _check_impute(f)
    return doc


def check_model_metadata(meta: dict[str, str] | None, schema: dict[str, Any], model_spec: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing document of a released model file's safetensors metadata, checked against
    the study it claims to be the model of (its schema's features and label, its model spec);
    SpecError says what is missing or different."""
    import json

    meta = meta or {}
    missing = [k for k in (METADATA_KEY, MODEL_KEY) if k not in meta]
    if missing:
        raise SpecError(f"the model file's metadata has no {' and no '.join(repr(k) for k in missing)}: a released "
                        "model carries its preprocessing and model spec (docs/data.md)")
    try:
        doc, spec = json.loads(meta[METADATA_KEY]), json.loads(meta[MODEL_KEY])
    except ValueError as e:
        raise SpecError(f"the model file's metadata is not JSON ({e})") from None
    check(doc)
    study_schema = validate_schema(schema)
    mine = schema_of(doc)
    if mine["features"] != study_schema["features"] or mine["label"] != study_schema["label"] \
            or mine["task"] != study_schema["task"]:
        raise SpecError("the model file's preprocessing does not describe this study's schema")
    if spec != model_spec:
        raise SpecError(f"the model file's spec {spec!r} is not this study's model {model_spec!r}"[:300])
    return doc


def _check_impute(f: dict[str, Any]) -> None:
    name, value = f["name"], f.get("impute")
    if f.get("missing", "error") == "error":
        if value is not None:
            raise SpecError(f"feature {name!r} allows no missing value but has an imputation value")
        return
    ok = {"float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "int": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "bool": lambda v: v in (0, 1) and not isinstance(v, float),
          "ordinal": lambda v: v in f.get("levels", []),
          "categorical": lambda v: v in f.get("categories", [])}[f["type"]]
    if not ok(value):
        raise SpecError(f"feature {name!r}: imputation value {value!r} is not a possible value of it")


def describe(doc: dict[str, Any]) -> list[str]:
    """One sentence per feature and one for the output: how a raw row is prepared (model card, CLI)."""
    lines = []
    for f in doc["features"]:
        name, ftype = f["name"], f["type"]
        if ftype in ("float", "int"):
            if f["scaling"] == "local":
                how = "standardised with each hospital's own mean and standard deviation"
            else:
                src = "the schema's constants" if f["scaling"] == "fixed" else "the federated statistics"
                how = f"standardised as (x - {f['center']:.6g}) / {f['scale']:.6g} ({src})"
        elif ftype == "bool":
            how = "0 or 1"
        elif ftype == "ordinal":
            how = f"level index / {len(f['levels']) - 1} over {', '.join(f['levels'])}"
        else:
            cats = ", ".join(f["categories"]) + (", other" if f.get("other") else "")
            how = f"one-hot over {cats}" + ("" if f.get("other") else " (another value is an error)")
        miss = f.get("missing", "error")
        if miss == "error":
            how += "; a missing value is an error"
        else:
            how += f"; a missing value becomes {f['impute']!r} ({miss})"
            if f.get("missing_indicator"):
                how += ", flagged in its missing-indicator column"
        lines.append(f"{name} ({ftype}): {how}")
    classes = label_classes({"task": doc["task"], "label": doc["label"]})
    lines.append("output: " + doc["output"] + (f" ({', '.join(classes)})" if classes else ""))
    return lines


__all__ = ["FORMAT", "METADATA_KEY", "MODEL_KEY", "OUTPUTS", "build", "check", "check_model_metadata", "describe",
           "schema_of"]
