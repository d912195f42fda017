"""A hostile hospital uploads well-formed ciphertexts under a key of its own: the platform cannot
tell (it cannot decrypt), and the round's aggregate decrypts to nothing. The honest nodes say so,
check each upload's noise budget (which decodes no value) and report it; the platform names the
culprit, excludes it, re-aggregates the round without it, and the study completes."""

from __future__ import annotations

import pytest
from helpers import create_study, setup_consortium, study_status, wait_for

from audit.models import AuditEvent
from audit.selectors import verify_study_chain
from fedproto.codec import get_codec, public_params_sha256
from hospital_node.ledger import Ledger
from studies.models import Aggregate, FinalModel, Participation, Round, Study, TrainingJob

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_an_upload_under_another_key_is_diagnosed_and_its_sender_excluded(stack, tmp_path):
    data, consortium, (ha, hb, hh), configs = setup_consortium(stack, tmp_path, n=3)
    honest = [stack.start_node("a", configs[0])]
    study = create_study(consortium, [ha, hb, hh], data, rounds=3, quorum=2, deadline=90)
    # A approves first and is the key custodian; the hostile hospital H joins after. B starts only
    # once H has turned hostile: until B answers, the study cannot start, so H cannot receive a
    # round-1 job while it still encrypts under the study key (the race this test once lost: H
    # trained and uploaded round 1 honestly in the milliseconds before it was stopped).
    wait_for(lambda: Participation.objects.filter(study=study, hospital=ha, state="approved").exists(), 120,
             "hospital A to approve", honest + stack.procs)
    hostile = stack.start_node("h", configs[2])
    wait_for(lambda: Participation.objects.filter(study=study, hospital=hh, key_acked_at__isnull=False).exists(), 120,
             "hospital H to hold the study key", [*honest, hostile] + stack.procs)
    # H turns hostile: it keeps running the real node software, with a study key of its own
    # (same parameters, so its uploads pass every platform check).
    assert hostile.stop() == 0
    codec = get_codec(study.encryption["codec"])
    foreign = codec.generate_secret(study.encryption)
    ledger = Ledger(configs[2].parent / "ledger.sqlite3")
    try:
        ledger.set_secret(study.pk, foreign, public_params_sha256(codec.public_params(foreign)))
    finally:
        ledger.close()
    assert study_status(study) == "recruiting" and not TrainingJob.objects.filter(round__study=study).exists()
    hostile = stack.start_node("h2", configs[2])
    honest.append(stack.start_node("b", configs[1]))

    wait_for(lambda: study_status(study) in ("failed", "cancelled")
             or (study.status == "completed" and FinalModel.objects.filter(study=study).exists()),
             420, "the study to end", [*honest, hostile] + stack.procs)
    assert study.status == Study.Status.COMPLETED, study.status_reason

    # The culprit is named: its upload was refused at the noise check, on the honest nodes' word.
    bad = TrainingJob.objects.filter(round__study=study, hospital=hh, reason_code="foreign_ciphertext")
    assert bad.count() == 1, list(TrainingJob.objects.filter(round__study=study).values_list("hospital_id", "status",
                                                                                          "reason_code"))
    job = bad.get()
    assert job.status == TrainingJob.Status.REFUSED and hh.name in job.reason
    rnd = Round.objects.get(pk=job.round_id)
    assert rnd.status == Round.Status.DONE and "re-aggregated without" in rnd.status_reason and hh.name in rnd.status_reason
    agg = Aggregate.objects.get(round=rnd)
    assert sorted(agg.contributors) == sorted([ha.pk, hb.pk]) and agg.n_contributors == 2
    p = Participation.objects.get(study=study, hospital=hh)
    assert p.state == Participation.State.WITHDRAWN and "excluded" in p.reason

    events = AuditEvent.objects.filter(study_id=study.pk)
    reaggregated = events.get(action="round.reaggregated")
    assert [c["hospital_id"] for c in reaggregated.data["culprits"]] == [hh.pk]
    assert sorted(reaggregated.data["culprits"][0]["reported_by"]) == sorted([ha.pk, hb.pk])
    reports = events.filter(action="aggregate.poison_reported")
    assert {e.hospital_id for e in reports} >= {ha.pk, hb.pk}
    for e in reports.filter(hospital_id__in=[ha.pk, hb.pk]):  # honest key holders: only H's upload is foreign
        assert {int(j) for j, b in e.data["budgets"].items() if b <= 0} == {job.pk}
    # No later round counted H, and the rounds after the poisoned one did not wait for it.
    later = Aggregate.objects.filter(round__study=study, round__number__gt=rnd.number)
    assert all(hh.pk not in a.contributors for a in later)
    assert verify_study_chain(study.pk).ok
