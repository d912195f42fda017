"""In-process API tests: the node protocol driven by a test client, with real TenSEAL."""

from __future__ import annotations

import pytest
from nodeclient import enrol  # noqa: E402

from consortia.services import consortium_create, hospital_create
from devstack.demo_data import breast_cancer_split
from studies import services


@pytest.fixture
def eager_celery():
    from config.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def world(tmp_path, django_db_blocker):
    """A consortium with two enrolled hospitals and a recruiting study."""
    from django.core.cache import cache

    cache.clear()  # the enrolment throttle counts per client address: each world starts afresh
    data = breast_cancer_split(tmp_path, ["A", "B"])
    c = consortium_create(name="API test consortium")
    ha, hb = hospital_create(consortium=c, name="A"), hospital_create(consortium=c, name="B")
    na, nb = enrol(ha), enrol(hb)
    study = services.study_create(
        consortium=c, name="api study", hospitals=[ha, hb], schema=data.schema,
        model_spec={"type": "logistic_regression"}, rounds=2, local_epochs=1, batch_size=32, learning_rate=0.1,
        privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}, encryption={"codec": "bfv-packed-v1"},
        quorum=2, round_deadline_s=600, seed=5)
    services.study_open_recruitment(study=study, actor="test")
    return {"consortium": c, "study": study, "a": na, "b": nb, "data": data}


