"""A node refuses a job that would exceed its privacy budget; its ledger is unchanged and the
platform records the refusal with the node's reason."""

from __future__ import annotations

import pytest
from helpers import create_study, setup_consortium, study_status, wait_for

from audit.models import AuditEvent
from hospital_node.ledger import Ledger
from hospital_node.trainer import epsilon_of
from studies import services
from studies.models import Participation, PrivacySpend, Round, Study, TrainingJob

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_node_refuses_a_retried_round_that_would_exceed_its_budget(stack, tmp_path):
    # Hospital B waits for its admin (auto_approve off); A approves on its own.
    data, consortium, (ha, hb), (cfg_a, cfg_b) = setup_consortium(stack, tmp_path, n=2, auto_approve=(True, False))
    node_a, node_b = stack.start_node("a", cfg_a), stack.start_node("b", cfg_b)
    # One planned round: A's noise is sized so that a single job spends (almost) the whole budget.
    study = create_study(consortium, [ha, hb], data, rounds=1, quorum=2, deadline=60)
    wait_for(lambda: Participation.objects.filter(study=study, hospital=ha, state="approved").exists(), 120,
             "hospital A to approve", [node_a, node_b] + stack.procs)
    # B's data disappears after its admin approves: B's jobs fail, so round 1 misses its quorum
    # and the platform retries it — a job A's budget does not cover.
    data.hospital_csvs[hb.name].rename(data.hospital_csvs[hb.name].with_suffix(".moved"))
    services.participation_decide(participation=Participation.objects.get(study=study, hospital=hb),
                                  decision="approve", actor="user:test-admin")
    wait_for(lambda: study_status(study) in ("failed", "completed"), 240, "the study to end",
             [node_a, node_b] + stack.procs)
    assert study.status == Study.Status.FAILED
    assert "round 1 failed 2 times" in study.status_reason

    first = TrainingJob.objects.get(round__study=study, round__attempt=1, hospital=ha)
    retry = TrainingJob.objects.get(round__study=study, round__attempt=2, hospital=ha)
    assert first.status == TrainingJob.Status.UPLOADED
    assert retry.status == TrainingJob.Status.REFUSED and retry.reason_code == "budget_exceeded", retry.reason
    assert "budget" in retry.reason.lower()
    assert not PrivacySpend.objects.filter(job=retry).exists()
    b_job = TrainingJob.objects.get(round__study=study, round__attempt=1, hospital=hb)
    assert b_job.reason_code == "data_error" and "data file does not exist" in b_job.reason
    csv_path = data.hospital_csvs[hb.name]
    assert str(csv_path.parent) not in b_job.reason and csv_path.name not in b_job.reason  # the path stays on the node
    assert not AuditEvent.objects.filter(data_canonical__contains=csv_path.name).exists()
    assert Round.objects.filter(study=study, status=Round.Status.FAILED).count() == 2

    # A's ledger holds exactly the first job's spend: the refusal changed nothing.
    assert node_a.stop() == 0
    ledger = Ledger(cfg_a.parent / "ledger.sqlite3")
    try:
        history = ledger.history(study.pk)
        spent = PrivacySpend.objects.get(job=first)
        assert len(history) == 1
        assert history[0][2] == spent.steps
        assert epsilon_of(history, study.delta, "rdp") == pytest.approx(spent.epsilon, rel=1e-9)
        assert spent.epsilon <= study.epsilon
        assert {j["job_id"] for j in ledger.jobs(study.pk)} == {first.pk}
    finally:
        ledger.close()
