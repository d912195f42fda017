"""A retried round costs no privacy budget: the node re-sends a fresh encryption of the update it
trained for that round (no steps, epsilon unchanged, the earlier job named), its ledger gains no
entry and equals the platform's recorded spend. A second node process on one config refuses to
start. (A job that would exceed the budget is refused: tests/hospital_node/test_node_flow.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import create_study, setup_consortium, study_status, wait_for

from audit.models import AuditEvent
from hospital_node.instance import lock_path
from hospital_node.ledger import Ledger
from hospital_node.trainer import epsilon_of
from studies import services
from studies.models import EncryptedUpdate, Participation, PrivacySpend, Round, Study, TrainingJob

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_retried_round_resends_its_update_at_no_privacy_cost(stack, tmp_path):
    # Hospital B waits for its admin (auto_approve off); A approves on its own.
    data, consortium, (ha, hb), (cfg_a, cfg_b) = setup_consortium(stack, tmp_path, n=2, auto_approve=(True, False))
    node_a, node_b = stack.start_node("a", cfg_a), stack.start_node("b", cfg_b)
    # A second daemon on A's config (an operator starting it twice) refuses to start.
    lock = lock_path(Path(cfg_a).parent / "ledger.sqlite3")
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(node_a.popen.pid), 60,
             "node A to hold its ledger lock", [node_a])
    twin = stack.start_node("a-twin", cfg_a)
    wait_for(lambda: not twin.alive(), 120, "the second process on A's config to exit")
    assert twin.popen.returncode == 1 and "another node process (pid" in twin.tail(), twin.tail()
    # One planned round: A's noise is sized so that a single job spends (almost) the whole budget,
    # so a retried round that trained again would exceed it.
    study = create_study(consortium, [ha, hb], data, rounds=1, quorum=2, deadline=60)
    wait_for(lambda: Participation.objects.filter(study=study, hospital=ha, state="approved").exists(), 120,
             "hospital A to approve", [node_a, node_b] + stack.procs)
    # B's data disappears after its admin approves: B's jobs fail, so round 1 misses its quorum
    # and the platform retries it.
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
    assert retry.status == TrainingJob.Status.UPLOADED, (retry.status, retry.reason)
    spent, respent = PrivacySpend.objects.get(job=first), PrivacySpend.objects.get(job=retry)
    assert respent.steps == 0 and respent.epsilon_round == 0.0 and respent.epsilon == spent.epsilon
    assert (respent.noise_multiplier, respent.sample_rate, respent.clip_norm, respent.accountant) == \
        (spent.noise_multiplier, spent.sample_rate, spent.clip_norm, spent.accountant)
    assert EncryptedUpdate.objects.get(job=retry).sha256 != EncryptedUpdate.objects.get(job=first).sha256
    assert TrainingJob.objects.get(round__study=study, round__attempt=1, hospital=hb).reason_code == "data_error"
    b_job = TrainingJob.objects.get(round__study=study, round__attempt=1, hospital=hb)
    assert "data file does not exist" in b_job.reason
    csv_path = data.hospital_csvs[hb.name]
    assert str(csv_path.parent) not in b_job.reason and csv_path.name not in b_job.reason  # the path stays on the node
    assert not AuditEvent.objects.filter(data_canonical__contains=csv_path.name).exists()
    assert Round.objects.filter(study=study, status=Round.Status.FAILED).count() == 2

    # A's ledger holds exactly the first job's spend: the retry spent nothing.
    assert node_a.stop() == 0
    ledger = Ledger(cfg_a.parent / "ledger.sqlite3")
    try:
        history = ledger.history(study.pk)
        assert len(history) == 1
        assert history[0][2] == spent.steps
        assert epsilon_of(history, study.delta, "rdp") == pytest.approx(spent.epsilon, rel=1e-9)
        assert spent.epsilon <= study.epsilon
        assert {j["job_id"]: j["state"] for j in ledger.jobs(study.pk)} == {first.pk: "uploaded", retry.pk: "uploaded"}
        assert json.loads(ledger.job(retry.pk)["spend_json"])["reuses_job"] == first.pk
    finally:
        ledger.close()
