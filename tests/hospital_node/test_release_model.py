"""The model a study releases carries its preprocessing: the file the node attests and uploads is
safetensors whose metadata holds the study's preprocessing document and model spec, the same bytes
on every node, and ``predict`` on it scores raw rows exactly as the node's own model does."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from conftest import make_node, make_study
from safetensors import safe_open

from fedproto import preprocessing
from fedproto.errors import SpecError
from fedproto.study import StudyConfig
from hospital_node import rounds, tools, trainer
from hospital_node.data import load_csv
from hospital_node.encoding import encode


def _fixed_study():
    study = make_study(rounds=1)
    study["schema"] = {"task": "binary_classification",
                       "features": [{"name": f"f{i}", "type": "float", "center": 0.1 * i, "scale": 1.0 + i}
                                    for i in range(4)],
                       "label": {"name": "y", "type": "binary"}}
    return study


@pytest.fixture
def trained(tmp_path, data_csv):
    study = _fixed_study()
    node = make_node(tmp_path, data_csv, study, limits="max_epsilon = 1.0")
    node.handle({"kind": "train", "job_id": 11, "study": study, "round": 1})
    frame = node.client.named("upload_update")[0][2]
    node.client.get_aggregate = lambda sid, r: (frame, 1)  # round 1's aggregate: this node's own update
    yield node, study
    node.ledger.close()


def test_the_released_file_is_the_attested_one_and_carries_the_preprocessing(trained, tmp_path):
    node, study = trained
    node.handle({"kind": "evaluate", "study_id": study["id"], "study": study, "round": 1})
    (report,) = node.client.named("report")
    node.handle({"kind": "upload_final_model", "study_id": study["id"], "study": study, "round": 1})
    (upload,) = node.client.named("upload_final_model")
    data = upload[2]
    assert hashlib.sha256(data).hexdigest() == report[3]["model_sha256"]  # what is attested is what is released
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    doc = json.loads(meta[preprocessing.METADATA_KEY])
    assert json.loads(meta[preprocessing.MODEL_KEY]) == study["model"]
    assert [f["center"] for f in doc["features"]] == [0.1 * i for i in range(4)]
    cfg = StudyConfig.from_wire(study)
    assert preprocessing.check_model_metadata(meta, cfg.schema, cfg.model) == doc
    # Byte for byte reproducible: another packaging of the same model (another node) is the same file.
    model = rounds.global_model(node, cfg, 1)
    assert all(rounds.release_bytes(node, cfg, model) == data for _ in range(5))
    # predict on the raw rows scores them as the node's own model does on its encoding of them
    out = io.StringIO()
    n = tools.predict(path, node.cfg.data_csv, out)
    got = np.array([float(x) for x in out.getvalue().splitlines()[1:]])
    X, _ = load_csv(node.cfg.data_csv, cfg.schema)
    mine = 1 / (1 + np.exp(-trainer.predict(model, encode(node.dataset(cfg).preprocessing, X)).reshape(-1)))
    assert n == len(X) and np.allclose(got, mine, atol=1e-5)
    # and exactly as training saw them: the training rows' encoding is the same encoding
    assert np.allclose(encode(doc, X)[:3], (X[:3] - [0.0, 0.1, 0.2, 0.3]) / [1.0, 2.0, 3.0, 4.0], atol=1e-6)


@pytest.mark.parametrize("meta, match", [
    (None, "has no 'fedproto.preprocessing'"),
    ({preprocessing.METADATA_KEY: "{", preprocessing.MODEL_KEY: "{}"}, "not JSON"),
    ("other schema", "does not describe this study's schema"),
    ("other model", "is not this study's model"),
])
def test_a_release_without_matching_preprocessing_is_refused(meta, match):
    cfg = StudyConfig.from_wire(_fixed_study())
    doc = preprocessing.build(cfg.schema)
    if meta == "other schema":
        other = {**cfg.schema, "features": cfg.schema["features"][:3]}
        meta = {preprocessing.METADATA_KEY: json.dumps(preprocessing.build(other)),
                preprocessing.MODEL_KEY: json.dumps(cfg.model)}
    elif meta == "other model":
        meta = {preprocessing.METADATA_KEY: json.dumps(doc),
                preprocessing.MODEL_KEY: json.dumps({"type": "mlp_classifier", "hidden": [4]})}
    with pytest.raises(SpecError, match=match):
        preprocessing.check_model_metadata(meta, cfg.schema, cfg.model)
