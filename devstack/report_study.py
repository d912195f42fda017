"""A finished study of many rounds written straight into the database, for the audit-report
benchmark (bench/bench_audit_report.py) and the report tests: no node, no encryption, but the rows
and the audit chain a real run leaves (rounds, jobs, privacy spends with true Opacus epsilons,
attestations, aggregates, ~15 audit events per round), so the report has as much to read and check.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from audit.services import actor_label
from consortia.services import consortium_create, hospital_create
from reports.epsilon_check import Accountants
from studies import services
from studies.models import Aggregate, Participation, PrivacySpend, Round, RoundReport, Study, TrainingJob
from studies.services.common import _study_audit

SCHEMA = {"task": "binary_classification",
          "features": [{"name": f"f{i}", "type": "float"} for i in range(8)],
          "label": {"name": "y", "type": "binary"}}
NOISE = 1.1
STEPS = 10


def _sample_rate(i: int) -> float:
    """Hospitals of different sizes: different Poisson sampling rates (and so different epsilons)."""
    return (0.02, 0.03, 0.05, 0.08, 0.1, 0.12)[i % 6]


def cumulative_epsilons(rate: float, rounds: int, *, delta: float = 1e-5) -> list[float]:
    """What a correct node reports after each of its jobs (RDP): Opacus' accountant over the growing
    history, through epsilon_check.Accountants (the same numbers, bit for bit, without recomputing
    the one-step RDP of every job: tests/reports/test_privacy_cache.py checks that)."""
    acc = Accountants()
    return [acc.epsilon([(NOISE, rate, STEPS)] * k, delta, "rdp") for k in range(1, rounds + 1)]


def build_finished_study(*, rounds: int = 40, hospitals: int = 4, name: str = "report study",
                         consortium=None, status: str = Study.Status.COMPLETED) -> Study:
    """A study of ``rounds`` done rounds and ``hospitals`` approved hospitals, its privacy spends
    recorded (and checked) as nodes send them; the study ends with ``status``."""
    consortium = consortium or consortium_create(name=f"{name} consortium")
    hs = [hospital_create(consortium=consortium, name=f"{name} hospital {chr(65 + i)}", max_epsilon=50.0)
          for i in range(hospitals)]
    study = services.study_create(
        consortium=consortium, name=name, hospitals=hs, schema=SCHEMA, model_spec={"type": "logistic_regression"},
        rounds=rounds, local_epochs=1, batch_size=32, learning_rate=0.1,
        privacy={"epsilon": 50.0, "delta": 1e-5, "clip_norm": 1.0}, encryption={"codec": "bfv-packed-raw-v1"},
        quorum=max(1, hospitals - 1), round_deadline_s=600, seed=11, actor="user:1:bench",
        purpose="Benchmark study: many rounds written straight into the database.")
    services.study_open_recruitment(study=study, actor="user:1:bench")
    eps = {h.pk: cumulative_epsilons(_sample_rate(i), rounds) for i, h in enumerate(hs)}
    t0 = timezone.now() - timedelta(hours=rounds)
    with transaction.atomic():
        for order, p in enumerate(Participation.objects.filter(study=study).select_related("hospital"), 1):
            Participation.objects.filter(pk=p.pk).update(state=Participation.State.APPROVED, decided_by="user:2:admin",
                                                         decided_at=t0, approved_order=order, key_acked_at=t0,
                                                         reason="approved by the data access committee")
            _study_audit(study, "participation.approved", "user:2:admin", obj=p, hospital_id=p.hospital_id,
                         data={"hospital": p.hospital.name, "reason": "approved by the data access committee"})
        Study.objects.filter(pk=study.pk).update(status=Study.Status.RUNNING, started_at=t0, custodian=hs[0])
    for r in range(1, rounds + 1):
        _write_round(study, hs, r, eps, t0 + timedelta(hours=r - 1))
    with transaction.atomic():
        Study.objects.filter(pk=study.pk).update(status=status, finished_at=timezone.now(),
                                                 status_reason=f"{rounds} rounds done")
        _study_audit(study, f"study.{status}", "system", data={"from": ["running"], "to": status})
    study.refresh_from_db()
    return study


def _write_round(study: Study, hs, number: int, eps: dict, opened) -> None:
    sha = hashlib.sha256(f"{study.pk}-{number}".encode()).hexdigest()
    with transaction.atomic():
        rnd = Round.objects.create(study=study, number=number, status=Round.Status.DONE, deadline=opened + timedelta(minutes=10),
                                   collecting_at=opened, closed_at=opened + timedelta(minutes=2),
                                   done_at=opened + timedelta(minutes=3), n_updates=len(hs))
        Round.objects.filter(pk=rnd.pk).update(opened_at=opened)
        _study_audit(study, "round.opened", "system", obj=rnd, data={"round": number, "attempt": 1,
                                                                      "hospitals": [h.name for h in hs]})
        for i, h in enumerate(hs):
            job = TrainingJob.objects.create(round=rnd, hospital=h, status=TrainingJob.Status.UPLOADED,
                                             finished_at=opened + timedelta(minutes=1))
            spend = {"epsilon": eps[h.pk][number - 1], "delta": 1e-5, "noise_multiplier": NOISE,
                     "sample_rate": _sample_rate(i), "steps": STEPS, "clip_norm": 1.0, "accountant": "rdp",
                     "accountant_version": "1.6.0", "dp_engine": "fused"}
            ps = PrivacySpend.objects.create(job=job, **spend)
            _study_audit(study, "privacy.spent", actor_label(hospital=h), obj=ps, hospital_id=h.pk,
                         data={"round": number, **spend, "budget": study.epsilon})
            _study_audit(study, "update.accepted", actor_label(hospital=h), obj=job, hospital_id=h.pk,
                         data={"round": number, "sha256": hashlib.sha256(f"{job.pk}".encode()).hexdigest()})
        _study_audit(study, "round.closed", "system", obj=rnd, data={"round": number, "uploaded": len(hs)})
        Aggregate.objects.create(round=rnd, path=f"bench/agg-{rnd.pk}", n_parts=1, size_bytes=1,
                                 sha256=hashlib.sha256(f"agg-{rnd.pk}".encode()).hexdigest(), n_contributors=len(hs),
                                 contributors=[h.pk for h in hs])
        _study_audit(study, "round.aggregated", "system", obj=rnd, data={"round": number, "contributors": len(hs)})
        for i, h in enumerate(hs):
            metrics = {"auc": 0.70 + 0.2 * number / study.rounds - 0.01 * i,
                       "accuracy": 0.65 + 0.2 * number / study.rounds}
            rep = RoundReport.objects.create(round=rnd, hospital=h, model_sha256=sha, n_test=100, metrics=metrics,
                                             epsilon_spent=eps[h.pk][number - 1])
            _study_audit(study, "model.attested", actor_label(hospital=h), obj=rep, hospital_id=h.pk,
                         data={"round": number, "model_sha256": sha})
