"""``predict`` scores raw rows exactly as training prepared them; ``check`` tells a data manager
whether a file fits a study; damaged or forged model files are clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedproto import preprocessing, statistics
from fedproto.schema import validate_schema
from hospital_node.data import load_csv
from hospital_node.encoding import encode
from hospital_node.networks import build_model
from hospital_node.tools import package_model

REPO = Path(__file__).resolve().parents[2]
SCHEMA = validate_schema({"task": "binary_classification", "features": [
    {"name": "age", "type": "float", "range": [0, 100], "missing": "median", "missing_indicator": True},
    {"name": "meno", "type": "categorical", "categories": ["Pre", "Post"], "other": True},
    {"name": "grade", "type": "ordinal", "levels": ["I", "II", "III"], "missing": "mode"}],
    "label": {"name": "y", "type": "binary"}})
SPEC = {"type": "logistic_regression"}
TRAIN = "age,meno,grade,y\n40,Pre,I,0\n,Post,II,1\n70,Post,III,1\n55,Peri,,0\n62,Pre,II,1\n35,Pre,I,0\n"
NEW = "grade,meno,age\nIII,Post,80\nI,Peri,\n,Pre,45\n"  # other column order, no label


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hospital_node", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=120)


@pytest.fixture
def released(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text(TRAIN)
    X, y = load_csv(train, SCHEMA)
    doc = preprocessing.build(SCHEMA, statistics.derive(SCHEMA, statistics.local_vector(SCHEMA, X, y)))
    torch.manual_seed(0)
    model = build_model(SPEC, len(doc["columns"]))
    path = tmp_path / "model.safetensors"
    path.write_bytes(package_model(model.state_dict(), SPEC, doc))
    return path, model, doc


def test_predict_scores_new_rows_as_training_encoded_them(tmp_path, released):
    path, model, doc = released
    new = tmp_path / "new.csv"
    new.write_text(NEW)
    out = tmp_path / "scores.csv"
    r = _run("predict", "--model", str(path), "--csv", str(new), "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "probability" and len(lines) == 4
    X, _ = load_csv(new, SCHEMA, labels=False)
    with torch.no_grad():
        want = torch.sigmoid(model(torch.from_numpy(encode(doc, X)))).numpy().reshape(-1)
    assert np.allclose([float(v) for v in lines[1:]], want, atol=1e-5)
    # the median-imputed row and its indicator: the encoding the model saw
    enc = encode(doc, X)
    assert enc[1, doc["columns"].index("age__missing")] == 1.0 and enc[1, doc["columns"].index("meno=__other__")] == 1
    r = _run("predict", "--model", str(path), "--csv", str(new))  # stdout
    assert r.returncode == 0 and r.stdout.splitlines() == lines


@pytest.mark.parametrize("damage", ["garbage", "no metadata", "forged metadata", "wrong weights"])
def test_a_damaged_or_forged_model_file_is_a_clear_error(tmp_path, released, damage):
    path, model, doc = released
    from safetensors.torch import save

    bad = tmp_path / "bad.safetensors"
    if damage == "garbage":
        bad.write_bytes(b"\x80\x04\x95 not a model, maybe a pickle" * 10)
    elif damage == "no metadata":
        bad.write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    elif damage == "forged metadata":
        forged = json.loads(json.dumps(doc))
        forged["columns"] = forged["columns"][:-1]
        bad.write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()},
                             metadata={"fedproto.preprocessing": json.dumps(forged), "fedproto.model": json.dumps(SPEC)}))
    else:
        bad.write_bytes(save({"linear.weight": torch.zeros(1, 3), "linear.bias": torch.zeros(1)},
                             metadata={"fedproto.preprocessing": json.dumps(doc), "fedproto.model": json.dumps(SPEC)}))
    new = tmp_path / "new.csv"
    new.write_text(NEW)
    r = _run("predict", "--model", str(bad), "--csv", str(new))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert {"garbage": "not a safetensors", "no metadata": "carries no preprocessing",
            "forged metadata": "columns do not match", "wrong weights": "weights are invalid"}[damage] in r.stderr


def test_predict_names_row_and_column_of_a_bad_new_row(tmp_path, released):
    path, _, _ = released
    new = tmp_path / "new.csv"
    new.write_text("age,meno,grade\n50,Pre,IV\n")
    r = _run("predict", "--model", str(path), "--csv", str(new))
    assert r.returncode == 1 and "column 'grade', row 1" in r.stderr and "Traceback" not in r.stderr


def _config(tmp_path, data: Path) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[platform]\nurl = "http://127.0.0.1:9"\n[datasets.default]\npath = "{tmp_path / "none.csv"}"\n'
                   f'[datasets.cohort]\npath = "{data}"\n')
    return cfg


def test_check_reports_a_matching_file_and_names_the_problem_of_a_bad_one(tmp_path):
    data = tmp_path / "cohort.csv"
    data.write_text(TRAIN)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    cfg = _config(tmp_path, data)
    r = _run("check", "--config", str(cfg), "--schema", str(schema), "--dataset", "cohort")
    assert r.returncode == 0, r.stderr
    assert "6 rows match the schema" in r.stdout and "age: 16.7% missing, imputed (median)" in r.stdout
    assert "label: 0: 3, 1: 3" in r.stdout
    data.write_text(TRAIN.replace("Peri", "Peri\u00e9").replace("Post,III", "Post,IV"))
    r = _run("check", "--config", str(cfg), "--schema", str(schema), "--dataset", "cohort")
    assert r.returncode == 1 and "column 'grade', row 3" in r.stderr
    r = _run("check", "--config", str(cfg), "--schema", str(schema), "--dataset", "nope")
    assert r.returncode == 2 and "no data set 'nope'" in r.stderr
    r = _run("check", "--config", str(cfg), "--study", "12")
    assert r.returncode == 1 and "study 12 is unknown to this node" in r.stderr
    schema.write_text('{"task": "binary_classification", "features": []}')
    r = _run("check", "--config", str(cfg), "--schema", str(schema), "--dataset", "cohort")
    assert r.returncode == 1 and "cannot read schema" in r.stderr and "features" in r.stderr
    assert "Traceback" not in r.stderr
