"""Honest accounting and bounded inputs of the node API (issue 12): privacy spends in range and within
the budget, late spends recorded, retries at no new cost, no update aggregated without its spend,
replays refused, free-form fields bounded, and no database slot held while a body arrives."""

from __future__ import annotations

import json
import threading

import pytest
from nodeclient import ZERO_SPEND, encrypted_frame, run_setup

from audit.models import AuditEvent
from reports.selectors import problem_events
from studies.models import Aggregate, PrivacySpend, Round, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

SPEND = {"epsilon": 0.4, "delta": 1e-5, "noise_multiplier": 2.0, "sample_rate": 0.1, "steps": 10, "clip_norm": 1.0,
         "accountant": "rdp", "accountant_version": "opacus-1.6.0", "epsilon_round": 0.4, "dp_engine": "fused"}


def train_job(node, study) -> int:
    items = [i for i in node.work() if i["kind"] == "train"]
    assert items, node.work()
    return items[0]["job_id"]


BAD_SPENDS = [
    ({"epsilon": "NaN"}, "epsilon must be a finite number"),
    ({"epsilon": "Infinity"}, "epsilon must be a finite number"),
    ({"noise_multiplier": "-Infinity"}, "noise_multiplier must be a finite number"),
    ({"steps": 2**40}, "steps must be an integer in"),
    ({"steps": -1}, "steps must be an integer in"),
    ({"delta": 0}, "delta must be in (0, 1)"),
    ({"delta": 1.0}, "delta must be in (0, 1)"),
    ({"clip_norm": 0}, "clip_norm must be > 0"),
    ({"sample_rate": 1.5}, "sample_rate must be in (0, 1]"),
    ({"epsilon": 50.0}, "above this hospital's budget"),
    ({"accountant": "x" * 40}, "accountant must be a string of at most 32"),
]


def test_a_spend_out_of_range_is_a_422_with_an_audit_event(world, eager_celery):
    run_setup(world)
    study, a = world["study"], world["a"]
    ja = train_job(a, study)
    frame = encrypted_frame(a, study)
    for bad, what in BAD_SPENDS:
        r = a.post(f"jobs/{ja}/privacy-spend", {**SPEND, **bad})
        assert r.status_code == 422, (bad, r.content)
        assert what in r.json()["error"] and r.json()["code"] in ("invalid", "over_budget"), (bad, r.content)
        # The same spend riding with the upload stops the upload.
        r = a.put_bytes(f"jobs/{ja}/update", frame, headers={"X-Privacy-Spend": json.dumps({**SPEND, **bad})})
        assert r.status_code == 422 and what in r.json()["error"], (bad, r.content)
    assert not PrivacySpend.objects.exists()
    refused = AuditEvent.objects.filter(study_id=study.pk, action="privacy.spend_refused", hospital_id=a.hospital.pk)
    assert refused.count() == 2 * len(BAD_SPENDS)
    # The happy case next to it.
    assert a.post(f"jobs/{ja}/privacy-spend", SPEND).status_code == 201


def _finish_round_one(world):
    study, a, b = world["study"], world["a"], world["b"]
    for node in (a, b):
        assert node.upload(train_job(node, study), encrypted_frame(node, study, seed=node.hospital.pk), SPEND).status_code == 201
    assert Round.objects.get(study=study, number=1).status == Round.Status.DONE


def test_cumulative_epsilon_never_decreases(world, eager_celery):
    run_setup(world)
    _finish_round_one(world)
    study, a = world["study"], world["a"]
    j2 = train_job(a, study)
    r = a.post(f"jobs/{j2}/privacy-spend", {**SPEND, "epsilon": 0.3})
    assert r.status_code == 422 and r.json()["code"] == "epsilon_decreased"
    assert a.post(f"jobs/{j2}/privacy-spend", {**SPEND, "epsilon": 0.7}).status_code == 201


def test_a_late_spend_is_recorded_and_its_update_not_aggregated(world, eager_celery):
    from studies import services

    run_setup(world)
    study, a, b = world["study"], world["a"], world["b"]
    ja, jb = train_job(a, study), train_job(b, study)
    assert a.upload(ja, encrypted_frame(a, study), SPEND).status_code == 201
    services.round_try_close(round_id=TrainingJob.objects.get(pk=jb).round_id, force_deadline=True)
    assert TrainingJob.objects.get(pk=jb).status == TrainingJob.Status.EXPIRED
    # B trained and spent, but the round stopped waiting: the spend is recorded all the same, flagged late.
    r = b.post(f"jobs/{jb}/privacy-spend", SPEND)
    assert r.status_code == 201, r.content
    ps = PrivacySpend.objects.get(job_id=jb)
    assert ps.late is True and ps.epsilon == 0.4
    assert AuditEvent.objects.get(study_id=study.pk, action="privacy.spent", hospital_id=b.hospital.pk).data["late"] is True
    # Its update is not taken.
    r = b.put_bytes(f"jobs/{jb}/update", encrypted_frame(b, study))
    assert r.status_code == 409
    assert not Aggregate.objects.filter(round__study=study).exists()  # quorum 2 not met: the attempt failed


def test_a_retry_reusing_an_earlier_attempt_costs_nothing(world, eager_celery):
    from studies import services

    run_setup(world)
    study, a, b = world["study"], world["a"], world["b"]
    ja, jb = train_job(a, study), train_job(b, study)
    frame_a = encrypted_frame(a, study)
    assert a.upload(ja, frame_a, SPEND).status_code == 201
    services.round_try_close(round_id=TrainingJob.objects.get(pk=jb).round_id, force_deadline=True)
    retry = Round.objects.get(study=study, number=1, attempt=2)
    ja2, jb2 = (TrainingJob.objects.get(round=retry, hospital=n.hospital).pk for n in (a, b))
    reuse = {**SPEND, "steps": 0, "epsilon_round": 0.0, "reuses_job": ja}
    # Not an earlier attempt of this hospital: B's job, the retry itself, an unknown id, a job without a spend.
    for wrong in (jb, ja2, 10**9):
        r = a.post(f"jobs/{ja2}/privacy-spend", {**reuse, "reuses_job": wrong})
        assert r.status_code == 422 and r.json()["code"] == "invalid_reuse", r.content
    r = b.post(f"jobs/{jb2}/privacy-spend", {**reuse, "reuses_job": jb})
    assert r.status_code == 422 and "no recorded privacy spend" in r.json()["error"]
    # A reuse must cost nothing.
    r = a.post(f"jobs/{ja2}/privacy-spend", {**reuse, "steps": 10})
    assert r.status_code == 422 and r.json()["code"] == "invalid_reuse"
    # The real thing: recorded, and the same frame re-sent for the retry is not a replay.
    r = a.put_bytes(f"jobs/{ja2}/update", frame_a, headers={"X-Privacy-Spend": json.dumps(reuse)})
    assert r.status_code == 201, r.content
    assert PrivacySpend.objects.get(job_id=ja2).reuses_job_id == ja


def test_an_update_without_its_spend_is_left_out_and_flagged(world, eager_celery):
    run_setup(world)
    study, a, b = world["study"], world["a"], world["b"]
    assert a.upload(train_job(a, study), encrypted_frame(a, study), SPEND).status_code == 201
    jb = train_job(b, study)
    assert b.put_bytes(f"jobs/{jb}/update", encrypted_frame(b, study, seed=1)).status_code == 201  # no spend
    rnd = Round.objects.get(study=study, number=1, attempt=1)
    assert rnd.status == Round.Status.FAILED and "quorum is 2" in rnd.status_reason
    job = TrainingJob.objects.get(pk=jb)
    assert (job.status, job.reason_code) == (TrainingJob.Status.REFUSED, "spend_missing")
    ev = problem_events(study.pk).get(action="update.rejected", hospital_id=b.hospital.pk)
    assert ev.data["code"] == "spend_missing" and ev.data["stage"] == "round_close"


def test_an_update_with_its_spend_is_aggregated(world, eager_celery):
    run_setup(world)
    _finish_round_one(world)
    agg = Aggregate.objects.get(round__study=world["study"], round__number=1)
    assert agg.n_contributors == 2


def test_a_byte_identical_ciphertext_is_a_replay(world, eager_celery):
    run_setup(world)
    study, a, b = world["study"], world["a"], world["b"]
    frame = encrypted_frame(a, study)
    assert a.upload(train_job(a, study), frame, ZERO_SPEND).status_code == 201
    jb = train_job(b, study)
    r = b.upload(jb, frame, ZERO_SPEND)
    assert r.status_code == 409 and r.json()["code"] == "replay", r.content
    assert AuditEvent.objects.filter(study_id=study.pk, action="update.rejected", hospital_id=b.hospital.pk,
                                     data__code="replay").exists()
    assert b.upload(jb, encrypted_frame(b, study, seed=2), ZERO_SPEND).status_code == 201


def test_free_form_fields_are_bounded(world, eager_celery):
    run_setup(world)
    study, a = world["study"], world["a"]
    ok = a.post("heartbeat", {"node_version": "1.0", "status": {"disk": {"free_gb": 10}}})
    assert ok.status_code == 200
    for body, what in (({"status": {"x": "y" * 9000}}, "status is"),
                       ({"status": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "nests deeper"),
                       ({"status": [1]}, "status must be a JSON object"),
                       ({"node_version": "v" * 65}, "node_version is 65 characters")):
        r = a.post("heartbeat", body)
        assert r.status_code == 422 and what in r.json()["error"], (body, r.content)
    ja = train_job(a, study)
    r = a.post(f"jobs/{ja}/refuse", {"reason": "x" * 4001})
    assert r.status_code == 422 and "reason is 4001 characters" in r.json()["error"]
    r = a.post(f"jobs/{ja}/refuse", {"reason": "budget", "code": "c" * 33})
    assert r.status_code == 422 and "code is 33 characters" in r.json()["error"]
    assert TrainingJob.objects.get(pk=ja).status == TrainingJob.Status.DISPATCHED


def test_a_stalled_body_holds_no_database_slot(world):
    """16 slow unauthenticated enrolment bodies used to take every slot of the node API."""
    from django.core.handlers.wsgi import WSGIRequest
    from django.test import RequestFactory

    from studies.api import node as node_api

    gate, reading = threading.Event(), threading.Event()

    class StalledBody:
        def read(self, n=-1):
            reading.set()
            gate.wait(30)
            return b"{not json"

        readline = read

    environ = RequestFactory().post("/api/node/enrol", data=b"", content_type="application/json").environ
    environ.update({"wsgi.input": StalledBody(), "CONTENT_LENGTH": "9", "REMOTE_ADDR": "10.9.9.9"})
    free = node_api.DB_SLOTS._value
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", node_api.EnrolView.as_view()(WSGIRequest(environ))))
    t.start()
    try:
        assert reading.wait(10)
        assert node_api.DB_SLOTS._value == free  # the body is still arriving: no slot taken
    finally:
        gate.set()
        t.join(30)
    assert 400 <= out["r"].status_code < 500 and node_api.DB_SLOTS._value == free
