"""Fixtures of the node's unit tests: a small study and CSV data (real torch/Opacus)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fedproto.specs import n_params
from fedproto.study import StudyConfig


def make_study(n_features: int = 4, **over) -> dict:
    """A study dict as the platform sends it in a work item."""
    study = {
        "id": 7, "name": "unit", "consortium": "c", "protocol_version": 1,
        "schema": {"task": "binary_classification",
                   "features": [{"name": f"f{i}", "type": "float"} for i in range(n_features)],
                   "label": {"name": "y", "type": "binary"}},
        "model": {"type": "logistic_regression"},
        "rounds": 3, "local_epochs": 1, "batch_size": 16, "learning_rate": 0.5,
        "privacy": {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "accountant": "rdp"},
        "encryption": {"codec": "bfv-packed-v1", "max_hospitals": 200, "quant_bits": 12,
                       "update_clip": 1.0, "weight_cap_samples": 1000},
        "quorum": 2, "round_deadline_s": 600, "seed": 1234, "custodian_hospital_id": None,
        # a fixed 20 % split and no baseline: the node's behaviour these tests were written for
        # (the defaults, "auto" and the local-only baseline: tests/hospital_node/test_evaluation.py)
        "evaluation": {"holdout": 0.2, "local_baseline": False},
        "datasets": {"default": "default"},
    }
    study.update(over)
    study.setdefault("n_params", n_params(study["model"], len(study["schema"]["features"])))
    return study


def write_csv(path: Path, n_rows: int = 100, n_features: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.normal(size=n_rows) > 0).astype(int)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(f"f{i}" for i in range(n_features)), "y", "extra"])
        for row, label in zip(X, y):
            w.writerow([*(f"{v:.6f}" for v in row), label, "ignored"])
    return X, y


@pytest.fixture
def study() -> dict:
    return make_study()


@pytest.fixture
def config(study) -> StudyConfig:
    """``study`` parsed, as the node's handlers, trainer and ledger take it."""
    return StudyConfig.from_wire(study)


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    p = tmp_path / "data.csv"
    write_csv(p)
    return p


def make_node(tmp_path: Path, data_csv: Path, study: dict, limits: str = ""):
    """A Node (real ledger, recording client) that knows ``study`` and holds its HE secret."""
    from nacl.public import PrivateKey
    from recording_client import RecordingClient

    from fedproto.codec import get_codec
    from hospital_node.config import load_config
    from hospital_node.credentials import Credentials
    from hospital_node.daemon import Node

    (tmp_path / "node.toml").write_text(f'[platform]\nurl = "http://127.0.0.1:9"\n[data]\ncsv = "{data_csv}"\n'
                                        + (f"[limits]\n{limits}\n" if limits else ""))
    cfg = load_config(tmp_path / "node.toml")
    creds = Credentials(hospital_id=3, hospital_name="H", node_token="t", private_key=bytes(PrivateKey.generate()),
                        platform_url=cfg.platform_url)
    n = Node(cfg, creds, client=RecordingClient())
    codec = get_codec(study["encryption"]["codec"])
    n.ledger.remember_study(StudyConfig.from_wire(study))
    secret = codec.generate_secret(study["encryption"])
    n.ledger.set_secret(study["id"], secret, codec.public_params_sha256(codec.public_params(secret)))
    return n
