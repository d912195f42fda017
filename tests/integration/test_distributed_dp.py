"""Distributed-DP studies end to end: four node daemon processes over HTTP, a real web server and
Celery worker, PostgreSQL and Redis. Each round runs the secure-aggregation exchange (keys, sealed
shares, masked BFV uploads, unmasking); in the second test one hospital is killed mid-round,
after it shared its keys, and the study still completes with the survivors, the accounted
distributed-DP epsilon and a valid audit chain."""

from __future__ import annotations

import signal
import time

import pytest
from helpers import setup_consortium, study_status, wait_for

from audit.models import AuditEvent
from audit.selectors import verify_study_chain
from reports.privacy_model import privacy_model, privacy_model_line
from studies import services
from studies.models import FinalModel, PrivacySpend, Round, RoundReport, SecAggRound

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def ddp_study(consortium, hospitals, data, *, rounds=2, deadline=40):
    study = services.study_create(
        consortium=consortium, name=f"ddp {time.time_ns()}", hospitals=hospitals, schema=data.schema,
        model_spec={"type": "logistic_regression"}, rounds=rounds, local_epochs=1, batch_size=32, learning_rate=0.5,
        privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "mode": "distributed", "collusion": 1},
        encryption={"codec": "bfv-packed-v1", "max_hospitals": 20, "quant_bits": 24}, quorum=3,
        round_deadline_s=deadline, seed=99)
    services.study_open_recruitment(study=study, actor="test")
    return study


def _completed(study):
    return study_status(study) == "failed" or (study.status == "completed"
                                               and FinalModel.objects.filter(study=study).exists())


def _check_accounting(study, hospitals, rounds_by_hospital):
    eps = privacy_model(study)["epsilon"]
    for h in hospitals:
        spends = list(PrivacySpend.objects.filter(job__hospital=h, job__round__study=study, late=False)
                      .order_by("job__round__number"))
        assert len(spends) == rounds_by_hospital[h.pk], (h.name, len(spends))
        assert all(s.accountant == "ddg" and s.steps == 1 and s.sample_rate == 1.0 for s in spends)
        assert [s.epsilon for s in spends] == sorted(s.epsilon for s in spends)
        assert spends[-1].epsilon <= study.epsilon + 1e-9
        if rounds_by_hospital[h.pk] == study.rounds:
            assert abs(spends[-1].epsilon - eps) < 1e-6, (spends[-1].epsilon, eps)
    assert "distributed" in privacy_model_line(study)


def test_distributed_dp_study_completes_with_four_hospitals(ddp_stack, tmp_path):
    data, consortium, hospitals, configs = setup_consortium(ddp_stack, tmp_path, n=4)
    nodes = [ddp_stack.start_node(f"n{i}", c) for i, c in enumerate(configs)]
    study = ddp_study(consortium, hospitals, data)
    wait_for(lambda: _completed(study), 400, "the distributed-DP study to complete", nodes + ddp_stack.procs)
    assert study_status(study) == "completed", study.status_reason
    rounds = list(Round.objects.filter(study=study, status=Round.Status.DONE).order_by("number"))
    assert [r.number for r in rounds] == [1, 2]
    for r in rounds:
        sa = SecAggRound.objects.get(round=r)
        assert len(sa.u2) == 4 and sa.unmasked_at is not None and r.aggregate.n_contributors == 4
    _check_accounting(study, hospitals, {h.pk: 2 for h in hospitals})
    wait_for(lambda: RoundReport.objects.filter(round=rounds[-1]).count() == 4, 60, "final round reports")
    reports = list(RoundReport.objects.filter(round=rounds[-1]))
    assert {r.model_sha256 for r in reports} == {study.final_model.sha256}
    eps = privacy_model(study)["epsilon"]
    assert all(abs(r.epsilon_spent - eps) < 1e-6 for r in reports), [r.epsilon_spent for r in reports]  # the ledgers
    assert all(r.metrics["auc"] > 0.7 for r in reports), [r.metrics for r in reports]
    chain = verify_study_chain(study.pk)
    assert chain.ok, chain.problem
    for n in nodes:
        assert n.stop(sig=signal.SIGTERM) == 0, n.tail()


def test_a_hospital_killed_mid_round_and_the_study_completes(ddp_stack, tmp_path):
    data, consortium, hospitals, configs = setup_consortium(ddp_stack, tmp_path, n=4)
    nodes = [ddp_stack.start_node(f"n{i}", c) for i, c in enumerate(configs)]
    study = ddp_study(consortium, hospitals, data, deadline=30)
    wait_for(lambda: study_status(study) == "running", 120, "the study to start", nodes + ddp_stack.procs)
    study.refresh_from_db()
    victim = next(i for i, h in enumerate(hospitals) if h.pk != study.custodian_id)
    vid = hospitals[victim].pk

    def shared():
        sa = SecAggRound.objects.filter(round__study=study, round__number=1).first()
        return sa is not None and str(vid) in sa.bundles

    wait_for(shared, 120, "the victim to send its sealed shares in round 1", nodes + ddp_stack.procs)
    nodes[victim].kill()
    live = [n for i, n in enumerate(nodes) if i != victim]
    wait_for(lambda: _completed(study), 400, "the study to complete without the killed hospital",
             live + ddp_stack.procs)
    assert study_status(study) == "completed", study.status_reason
    r1 = Round.objects.get(study=study, number=1, status=Round.Status.DONE)
    sa = SecAggRound.objects.get(round=r1)
    assert vid in sa.u1 and vid not in sa.u2 and len(sa.u2) == 3
    unmasked = AuditEvent.objects.get(study_id=study.pk, action="secagg.unmasked", data__round=1)
    assert unmasked.data["dropped"] == [vid]
    assert r1.aggregate.n_contributors == 3
    survivors = [h for h in hospitals if h.pk != vid]
    _check_accounting(study, survivors, {h.pk: 2 for h in survivors})
    chain = verify_study_chain(study.pk)
    assert chain.ok, chain.problem
    for n in live:
        assert n.stop(sig=signal.SIGTERM) == 0, n.tail()
