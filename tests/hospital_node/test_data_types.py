"""The loader's contract for every task, categorical / ordinal / missing values, and the encoding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedproto import preprocessing
from fedproto.schema import validate_schema
from fedproto.specs import n_params
from fedproto.study import StudyConfig
from hospital_node.data import load_csv, prepare
from hospital_node.encoding import encode
from hospital_node.errors import DataError
from tests.hospital_node.conftest import make_study

FEATURES = [
    {"name": "age", "type": "float", "center": 50.0, "scale": 10.0, "missing": "constant", "fill_value": 60,
     "missing_indicator": True},
    {"name": "meno", "type": "categorical", "categories": ["Pre", "Post"], "missing": "constant", "fill_value": "Post"},
    {"name": "grade", "type": "ordinal", "levels": ["I", "II", "III"]},
    {"name": "hor", "type": "categorical", "categories": ["no", "yes"], "other": True},
]


def _schema(task="binary_classification", label=None):
    return validate_schema({"task": task, "features": FEATURES, "label": label or {"name": "y", "type": "binary"}})


def _csv(tmp_path, header, rows):
    p = tmp_path / "d.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


ROWS = ["40,Pre,I,no", ",Post,II,yes", "55,,III,maybe", "65,Pre,II,no", "70,Post,III,yes", "45,Pre,I,no"]


def test_codes_and_encoding_of_categorical_ordinal_and_missing(tmp_path):
    s = _schema()
    X, y = load_csv(_csv(tmp_path, "age,meno,grade,hor,y", [r + f",{i % 2}" for i, r in enumerate(ROWS)]), s)
    assert np.isnan(X[1, 0]) and np.isnan(X[2, 1])
    assert X[:3, 2].tolist() == [0, 1, 2] and X[:3, 3].tolist() == [0, 1, 2]  # "maybe" -> other (index 2)
    assert y.dtype == np.float64 and y.tolist() == [0, 1, 0, 1, 0, 1]
    doc = preprocessing.build(s)
    enc = encode(doc, X)
    assert doc["columns"] == ["age", "age__missing", "meno=Pre", "meno=Post", "grade", "hor=no", "hor=yes",
                              "hor=__other__"]
    np.testing.assert_allclose(enc[0], [-1.0, 0, 1, 0, 0.0, 1, 0, 0])
    np.testing.assert_allclose(enc[1], [1.0, 1, 0, 1, 0.5, 0, 1, 0])  # age imputed 60 -> (60-50)/10, flagged
    np.testing.assert_allclose(enc[2], [0.5, 0, 0, 1, 1.0, 0, 0, 1])  # meno imputed Post; hor other
    assert enc.dtype == np.float32


def test_an_undeclared_category_without_other_names_row_and_column(tmp_path):
    s = _schema()
    p = _csv(tmp_path, "age,meno,grade,hor,y", ["40,Pre,I,no,0", "41,Peri,I,no,1"])
    with pytest.raises(DataError) as e:
        load_csv(p, s)
    assert "'Peri'" in str(e.value) and "column 'meno', row 2" in str(e.value) and "declare it" in str(e.value)
    assert e.value.public == "column 'meno': a value is not one of the declared categories"


def test_an_undeclared_level_and_a_forbidden_missing_value(tmp_path):
    s = _schema()
    with pytest.raises(DataError, match=r"'IV' in column 'grade', row 1 .* declared levels \(I, II, III\)"):
        load_csv(_csv(tmp_path, "age,meno,grade,hor,y", ["40,Pre,IV,no,0"]), s)
    with pytest.raises(DataError, match=r"empty or NaN value in column 'grade', row 1"):
        load_csv(_csv(tmp_path, "age,meno,grade,hor,y", ["40,Pre,NA,no,0"]), s)


def test_multiclass_labels_are_int64_indexes_in_declared_order(tmp_path):
    s = _schema("multiclass_classification", {"name": "stage", "type": "class", "classes": ["low", "mid", "high"]})
    X, y = load_csv(_csv(tmp_path, "age,meno,grade,hor,stage", [r + "," + c for r, c in
                                                                 zip(ROWS, ["high", "low", "mid", "mid", "low", "high"])]), s)
    assert y.dtype == np.int64 and y.tolist() == [2, 0, 1, 1, 0, 2]
    with pytest.raises(DataError) as e:
        load_csv(_csv(tmp_path, "age,meno,grade,hor,stage", [ROWS[0] + ",extreme"]), s)
    assert e.value.public == "label column 'stage': a value is not one of the declared classes"


def test_survival_labels_are_time_event_pairs(tmp_path):
    s = _schema("survival", {"type": "survival", "time": "t", "event": "e"})
    X, y = load_csv(_csv(tmp_path, "age,meno,grade,hor,t,e", [r + f",{10 * (i + 1)},{i % 2}" for i, r in enumerate(ROWS)]), s)
    assert y.shape == (6, 2) and y[:, 0].tolist() == [10, 20, 30, 40, 50, 60] and y[:, 1].tolist() == [0, 1] * 3


@pytest.mark.parametrize("t, e, message, public", [
    ("0", "1", "is not positive", "time column 't': a value is not positive"),
    ("-3", "1", "is not positive", "time column 't': a value is not positive"),
    ("", "1", "survival time .* is missing", "time column 't': a value is missing"),
    ("12", "2", "is not boolean", "column 'e': an event indicator is not boolean (0 or 1)"),
    ("12", "NA", "event indicator .* is missing", "event column 'e': a value is missing"),
])
def test_bad_survival_rows_are_errors(tmp_path, t, e, message, public):
    s = _schema("survival", {"type": "survival", "time": "t", "event": "e"})
    with pytest.raises(DataError, match=message) as err:
        load_csv(_csv(tmp_path, "age,meno,grade,hor,t,e", [ROWS[0] + ",5,0", ROWS[3] + f",{t},{e}"]), s)
    assert "row 2" in str(err.value) and err.value.public == public


def test_a_missing_label_is_an_error(tmp_path):
    with pytest.raises(DataError, match="label in column 'y', row 1 .* is missing") as e:
        load_csv(_csv(tmp_path, "age,meno,grade,hor,y", [ROWS[0] + ","]), _schema())
    assert e.value.public == "label column 'y': a value is missing"


def _study(schema, **over):
    wire = make_study(schema=schema, **over)
    wire["n_params"] = n_params(wire["model"], len(preprocessing.build(schema)["columns"]))
    return StudyConfig.from_wire(wire)


def test_prepare_gives_the_contract_types_for_binary(tmp_path):
    s = _schema()
    rows = [f"{40 + i % 30},{'Pre' if i % 3 else 'Post'},{['I', 'II', 'III'][i % 3]},no,{i % 2}" for i in range(40)]
    X, y = load_csv(_csv(tmp_path, "age,meno,grade,hor,y", rows), s)
    study = _study(s)
    ds = prepare(study, X, y)
    assert ds.X_train.shape == (32, study.n_features) == (32, 8) and ds.X_train.dtype == np.float32
    assert ds.y_train.dtype == np.float32 and set(np.unique(ds.y_train)) <= {0.0, 1.0}
    assert ds.preprocessing["columns"][0] == "age" and ds.center[0] == 50.0 and np.isnan(ds.center[1])


def test_prepare_stratifies_survival_on_the_event(tmp_path):
    s = _schema("survival", {"type": "survival", "time": "t", "event": "e"})
    rows = [f"{40 + i % 30},Pre,I,no,{i + 1},{1 if i % 4 == 0 else 0}" for i in range(40)]
    X, y = load_csv(_csv(tmp_path, "age,meno,grade,hor,t,e", rows), s)
    wire_model = {"type": "logistic_regression"}  # the split does not look at the model
    study = dataclasses.replace(_study(_schema()), schema=s, model=wire_model)
    ds = prepare(study, X, y)
    assert ds.y_train.shape == (32, 2) and ds.y_train.dtype == np.float32
    assert ds.y_train[:, 1].sum() == 8 and ds.y_test[:, 1].sum() == 2  # 10 events, split 80/20
