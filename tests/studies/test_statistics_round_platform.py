"""The statistics round on the platform: round 0 opens before round 1 when the schema needs federated
statistics, its uploads are sized by the statistics vector, a statistics_unusable refusal fails the
study with the reason, and the summary shows the constants every hospital reported."""

from __future__ import annotations

import pytest
from audit_support import enrolled, postgres  # noqa: F401 - fixture

from consortia.services import consortium_create
from fedproto import statistics
from studies import selectors, services
from studies.models import Participation, Round, Study, TrainingJob

SCHEMA = {"task": "binary_classification",
          "features": [{"name": "age", "type": "float", "range": [0, 100]},
                       {"name": "size", "type": "float", "center": 1.0, "scale": 2.0}],
          "label": {"name": "y", "type": "binary"}}


@pytest.fixture
def running(postgres):  # noqa: F811
    c = consortium_create(name="Statistics consortium")
    a, b = enrolled(c, "Hospital A"), enrolled(c, "Hospital B")
    study = services.study_create(
        consortium=c, name="stats study", hospitals=[a, b], schema=SCHEMA, model_spec={"type": "logistic_regression"},
        rounds=2, local_epochs=1, batch_size=16, learning_rate=0.1,
        privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}, encryption={"codec": "bfv-packed-v1"}, quorum=2,
        round_deadline_s=600, seed=7)
    Participation.objects.filter(study=study).update(state=Participation.State.APPROVED)
    Study.objects.filter(pk=study.pk).update(status=Study.Status.RUNNING)
    services.study_advance(study_id=study.pk)
    return Study.objects.get(pk=study.pk), (a, b)


def test_round_0_opens_first_and_is_sized_by_the_statistics_vector(running):
    study, (a, b) = running
    rnd = Round.objects.get(study=study)
    assert rnd.number == 0 and TrainingJob.objects.filter(round=rnd).count() == 2
    assert statistics.round_length(study.schema, study.n_params, 0) == len(statistics.layout(study.schema))
    prep = selectors.data_preparation(study)
    assert prep["mode"] == "federated" and prep["round"]["status"] == "collecting"
    assert [f["scaling"] for f in prep["features"]] == ["federated", "fixed"]
    assert selectors.study_progress(study)["rounds_done"] == 0


def test_round_0_reports_show_identical_constants(running):
    study, (a, b) = running
    rnd = Round.objects.get(study=study, number=0)
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.DONE)
    rnd.refresh_from_db()
    stats = {"n": 300.0, "features": {"age": {"mean": 51.5, "std": 9.8, "missing_rate": 0.0}}, "label_counts": {}}
    for h in (a, b):
        services.round_report_record(rnd=rnd, hospital=h, metrics={}, n_test=0, model_sha256="a" * 64,
                                     epsilon_spent=0.25, preprocessing={"statistics": stats, "sha256": "a" * 64})
    prep = selectors.data_preparation(study)
    assert prep["identical_constants"] and prep["hospitals_reported"] == 2 and prep["rows"] == 300.0
    assert prep["features"][0]["center"] == 51.5 and prep["features"][0]["scale"] == 9.8
    assert selectors.study_progress(study)["rounds_done"] == 0  # round 0 is no training round


def test_unusable_statistics_fail_the_study_with_the_reason(running):
    study, (a, _) = running
    rnd = Round.objects.get(study=study, number=0)
    job = TrainingJob.objects.get(round=rnd, hospital=a)
    services.job_refuse(job=job, hospital=a, reason="the federated statistics are unusable: out of range",
                        code="statistics_unusable")
    study.refresh_from_db()
    assert study.status == Study.Status.FAILED and "statistics are unusable" in study.status_reason


def test_an_opted_out_schema_starts_with_round_1(postgres):  # noqa: F811
    c = consortium_create(name="Opt-out consortium")
    a, b = enrolled(c, "Hospital A"), enrolled(c, "Hospital B")
    study = services.study_create(
        consortium=c, name="local study", hospitals=[a, b], schema={**SCHEMA, "statistics": {"federated": False}},
        model_spec={"type": "logistic_regression"}, rounds=2, local_epochs=1, batch_size=16, learning_rate=0.1,
        privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}, encryption={"codec": "bfv-packed-v1"}, quorum=2,
        round_deadline_s=600, seed=7)
    Study.objects.filter(pk=study.pk).update(status=Study.Status.RUNNING)
    services.study_advance(study_id=study.pk)
    assert Round.objects.get(study=study).number == 1
    assert selectors.data_preparation(study)["mode"] == "opted_out"


def test_the_audit_report_has_a_data_preparation_step(running):
    from reports.report import render_html

    study, (a, b) = running
    html = render_html(study, context=None)
    assert 'id="data-preparation"' in html and "statistics round (round 0)" in html
