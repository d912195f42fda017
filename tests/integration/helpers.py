"""Helpers for tests that run real studies: consortium set-up and waiting on state."""

from __future__ import annotations

import time
from pathlib import Path

from consortia.services import consortium_create, enrolment_token_create, hospital_create
from devstack.demo_data import breast_cancer_split
from devstack.localstack import write_node_config
from studies import services
from studies.models import Study

NAMES = ["Alpha Hospital", "Beta Hospital", "Gamma Hospital", "Delta Hospital"]


def setup_consortium(stack, tmp_path: Path, n: int = 3, *, auto_approve=(True, True, True, True), max_epsilon: float = 5.0,
                     preprocessing: str = "reference"):
    data = breast_cancer_split(tmp_path / "hospitals", NAMES[:n], preprocessing=preprocessing)
    consortium = consortium_create(name=f"Test consortium {time.time_ns()}")
    hospitals, configs = [], []
    for i, name in enumerate(NAMES[:n]):
        h = hospital_create(consortium=consortium, name=name)
        _, token = enrolment_token_create(hospital=h)
        cfg = write_node_config(tmp_path / "hospitals" / f"node{i}" / "node.toml", base_url=stack.base_url,
                                csv=data.hospital_csvs[name], max_epsilon=max_epsilon,
                                auto_approve=auto_approve[i], poll_wait_s=10)
        stack.enrol_node(cfg, token)
        hospitals.append(h)
        configs.append(cfg)
    return data, consortium, hospitals, configs


def create_study(consortium, hospitals, data, *, rounds=3, quorum=2, deadline=60, epsilon=1.0, name=None,
                 model=None):
    study = services.study_create(
        consortium=consortium, name=name or f"study {time.time_ns()}", hospitals=hospitals, schema=data.schema,
        model_spec=model or {"type": "logistic_regression"}, rounds=rounds, local_epochs=1, batch_size=32,
        learning_rate=0.5, privacy={"epsilon": epsilon, "delta": 1e-5, "clip_norm": 1.0},
        encryption={}, quorum=quorum, round_deadline_s=deadline, seed=99)
    services.study_open_recruitment(study=study, actor="test")
    return study


def wait_for(predicate, timeout: float, what: str, procs=(), interval: float = 0.25):
    """Poll until predicate() is truthy; fail at once if one of `procs` that was alive exits."""
    procs = list(procs)
    alive = [p for p in procs if p.alive()]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        dead = [p for p in alive if not p.alive()]
        if dead:
            raise AssertionError(f"{', '.join(p.name for p in dead)} exited while waiting for {what}\n"
                                 + "\n".join(f"--- {p.name} ---\n{p.tail(40)}" for p in dead))
        time.sleep(interval)
    logs = "\n".join(f"--- {p.name} ---\n{p.tail(25)}" for p in procs)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def study_status(study: Study) -> str:
    study.refresh_from_db()
    return study.status
