"""The data schema: feature types, missing values, labels of every task, the encoded layout."""

from __future__ import annotations

import pytest

from fedproto.errors import SpecError
from fedproto.schema import (
    encoded_columns,
    label_classes,
    label_columns,
    n_outputs,
    needs_statistics,
    required_columns,
    scaling,
    validate_schema,
)
from fedproto.specs import TASKS


def schema(*features, task="binary_classification", label=None, **extra):
    return {"task": task, "features": list(features), "label": label or {"name": "y", "type": "binary"}, **extra}


CLINICAL = schema(
    {"name": "age", "type": "float", "range": [18, 100], "missing": "median", "missing_indicator": True},
    {"name": "menostat", "type": "categorical", "categories": ["Pre", "Post"]},
    {"name": "horTh", "type": "categorical", "categories": ["no", "yes"], "other": True, "missing": "mode"},
    {"name": "tgrade", "type": "ordinal", "levels": ["I", "II", "III"], "missing": "constant", "fill_value": "II"},
    {"name": "pnodes", "type": "int", "center": 5.0, "scale": 5.0},
    {"name": "smoker", "type": "bool", "missing": "mode"},
    task="survival", label={"type": "survival", "time": "time", "event": "cens"})


def test_tasks_include_multiclass_and_survival():
    assert set(TASKS) == {"binary_classification", "regression", "multiclass_classification", "survival"}


def test_a_clinical_schema_normalises_and_encodes():
    s = validate_schema(CLINICAL)
    assert encoded_columns(s) == ["age", "age__missing", "menostat=Pre", "menostat=Post", "horTh=no", "horTh=yes",
                                  "horTh=__other__", "tgrade", "pnodes", "smoker"]
    assert label_columns(s) == ["time", "cens"]
    assert required_columns(s)[-2:] == ["time", "cens"]
    assert [scaling(f) for f in s["features"]] == ["federated", "none", "none", "none", "fixed", "none"]
    assert needs_statistics(s) and s["statistics"] == {"epsilon_share": 0.25, "histogram_bins": 32}
    assert s["features"][3]["fill_value"] == "II" and n_outputs(s) == 1


def test_a_schema_written_before_the_new_fields_normalises_to_itself():
    old = schema({"name": "a", "type": "float"}, {"name": "b", "type": "int", "center": 1.0, "scale": 2.0})
    assert validate_schema(old) == old
    assert not needs_statistics(old) and "statistics" not in validate_schema(old)
    assert [scaling(f) for f in old["features"]] == ["local", "fixed"]


def test_multiclass_label_declares_its_classes_in_output_order():
    s = validate_schema(schema({"name": "a", "range": [0, 1]}, task="multiclass_classification",
                               label={"name": "stage", "type": "class", "classes": ["a", "b", 3]}))
    assert label_classes(s) == ["a", "b", "3"] and n_outputs(s) == 3
    assert label_classes(validate_schema(CLINICAL)) is None


@pytest.mark.parametrize("bad, message", [
    ({"name": "x", "type": "categorical"}, "categories must be a list"),
    ({"name": "x", "type": "categorical", "categories": ["a", "a"]}, r"lists \['a'\] more than once"),
    ({"name": "x", "type": "categorical", "categories": ["a"], "other": "yes"}, "other must be true or false"),
    ({"name": "x", "type": "ordinal", "levels": ["only"]}, "levels must be a list of 2"),
    ({"name": "x", "type": "ordinal", "levels": [" I", "II"]}, "without surrounding spaces"),
    ({"name": "x", "type": "float", "missing": "mean"}, "needs a declared 'range'"),
    ({"name": "x", "type": "float", "missing": "mode"}, "not possible for a float feature"),
    ({"name": "x", "type": "categorical", "categories": ["a"], "missing": "median"}, "not possible for a categorical"),
    ({"name": "x", "type": "float", "missing_indicator": True}, "needs missing values to be allowed"),
    ({"name": "x", "type": "float", "missing": "constant"}, "needs a 'fill_value'"),
    ({"name": "x", "type": "int", "missing": "constant", "fill_value": 1.5}, "must be an integer"),
    ({"name": "x", "type": "bool", "missing": "constant", "fill_value": 2}, "must be 0 or 1"),
    ({"name": "x", "type": "ordinal", "levels": ["a", "b"], "missing": "constant", "fill_value": "c"},
     "not one of its declared values"),
    ({"name": "x", "type": "float", "fill_value": 1}, "only used with missing"),
    ({"name": "x", "type": "float", "range": [3, 3]}, "low must be below high"),
    ({"name": "x", "type": "float", "range": [0, float("inf")]}, "finite number"),
    ({"name": "x", "type": "bool", "range": [0, 1]}, "takes no field"),
    ({"name": "x", "type": "categorical", "categories": ["a"], "levels": ["a", "b"]}, "takes no field"),
    ({"name": "x", "type": "text"}, "has type 'text'"),
])
def test_bad_features_are_named(bad, message):
    with pytest.raises(SpecError, match=message):
        validate_schema(schema(bad))


@pytest.mark.parametrize("task, label, message", [
    ("survival", {"type": "survival", "time": "t"}, "needs 'event'"),
    ("survival", {"type": "survival", "time": "t", "event": "t"}, "must be different"),
    ("survival", {"type": "survival", "time": "t", "event": "e", "name": "y"}, "has 'time' and 'event'"),
    ("survival", {"type": "binary", "name": "y"}, "needs 'survival'"),
    ("multiclass_classification", {"name": "y", "type": "class"}, "classes must be a list"),
    ("multiclass_classification", {"name": "y", "type": "class", "classes": ["a"]}, "list of 2"),
    ("binary_classification", {"name": "y", "type": "binary", "classes": ["a", "b"]}, "unknown field"),
    ("regression", {"name": "y", "type": "binary"}, "needs 'float'"),
    ("survival", {"type": "survival", "time": "a", "event": "e"}, "'a' is also listed as a feature"),
])
def test_bad_labels_are_named(task, label, message):
    with pytest.raises(SpecError, match=message):
        validate_schema(schema({"name": "a", "type": "float"}, task=task, label=label))


@pytest.mark.parametrize("stats, message", [
    ({"epsilon_share": 0}, r"epsilon_share must be a number in \(0, 0.9\]"),
    ({"epsilon_share": 0.95}, "epsilon_share"),
    ({"histogram_bins": 3}, "histogram_bins must be an integer from 4"),
    ({"bins": 8}, "unknown field"),
])
def test_bad_statistics_settings(stats, message):
    with pytest.raises(SpecError, match=message):
        validate_schema(schema({"name": "a", "range": [0, 1]}, statistics=stats))


def test_statistics_settings_are_kept():
    s = validate_schema(schema({"name": "a", "range": [0, 1]}, statistics={"epsilon_share": 0.5, "histogram_bins": 16}))
    assert s["statistics"] == {"epsilon_share": 0.5, "histogram_bins": 16}


def test_too_many_encoded_columns_is_refused():
    cats = [f"c{i}" for i in range(200)]
    feats = [{"name": f"x{j}", "type": "categorical", "categories": cats} for j in range(51)]
    with pytest.raises(SpecError, match="encodes to 10200 model inputs"):
        validate_schema(schema(*feats))
