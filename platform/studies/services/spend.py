"""Privacy spends: what a node's accountant says after a job, checked before it is recorded.

A spend is the record an auditor recomputes the hospital's epsilon from, so it must be a
possible one: finite numbers in range, a cumulative epsilon that never goes down from one job to
the next and never goes above the study's budget (nor the hospital's own cap). A spend that a
node really made is always recorded, even for a job the round no longer waits for (flagged late);
a retry attempt of a round the node already trained may re-send the same update at no new cost,
naming the earlier job it reuses ("reuses_job", steps 0).
"""

from __future__ import annotations

import math
import re
from typing import Any

from django.db import transaction

from audit.services import actor_label
from consortia.models import Hospital

from ..models import PrivacySpend, Study, TrainingJob
from .common import RECOMPUTE_PRIVACY, _audit_refusal, _study_audit, enqueue_on_commit
from .errors import ServiceError

DP_ENGINE_RE = re.compile(r"[A-Za-z0-9._-]{0,32}")
SPEND_FIELDS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "clip_norm", "accountant",
                "accountant_version")
MAX_STEPS = 2**31 - 1  # the column is a 32-bit integer
# Slack of the budget comparisons (the node's accountant and the study's budget are both floats).
EPS_TOL = 1e-9
# Jobs whose spend counts as made on time (the round still waited for it); any other state is late.
ON_TIME = (TrainingJob.Status.DISPATCHED, TrainingJob.Status.UPLOADED)


def _number(spend: dict, key: str, *, integer: bool = False) -> Any:
    v = spend[key]
    if isinstance(v, bool):
        raise ServiceError(f"privacy spend {key} must be a number, got {v!r}", code="invalid", status=422)
    try:
        if integer:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            out: Any = int(v)
        else:
            out = float(v)
    except (TypeError, ValueError, OverflowError):
        raise ServiceError(f"privacy spend {key} must be {'an integer' if integer else 'a number'}, got {str(v)[:40]!r}",
                           code="invalid", status=422) from None
    if not integer and not math.isfinite(out):
        raise ServiceError(f"privacy spend {key} must be a finite number, got {str(v)[:40]!r}", code="invalid", status=422)
    return out


def _parse(spend: dict) -> dict:
    """The spend's values, each checked for type and range; ServiceError (422) names the first bad one."""
    missing = [k for k in SPEND_FIELDS if k not in spend]
    if missing:
        raise ServiceError(f"privacy spend is missing {missing}", code="invalid", status=422)
    vals: dict[str, Any] = {k: _number(spend, k) for k in ("epsilon", "delta", "noise_multiplier", "sample_rate", "clip_norm")}
    vals["steps"] = _number(spend, "steps", integer=True)
    vals["epsilon_round"] = _number(spend, "epsilon_round") if spend.get("epsilon_round") is not None else None
    ranges = (
        ("epsilon", vals["epsilon"] >= 0, "a finite number >= 0"),
        ("delta", 0 < vals["delta"] < 1, "in (0, 1)"),
        ("clip_norm", vals["clip_norm"] > 0, "> 0"),
        ("sample_rate", 0 < vals["sample_rate"] <= 1, "in (0, 1]"),
        ("noise_multiplier", vals["noise_multiplier"] >= 0, ">= 0"),
        ("steps", 0 <= vals["steps"] <= MAX_STEPS, f"an integer in [0, {MAX_STEPS}]"),
        ("epsilon_round", vals["epsilon_round"] is None or vals["epsilon_round"] >= 0, ">= 0"),
    )
    for key, ok, what in ranges:
        if not ok:
            raise ServiceError(f"privacy spend {key} must be {what}, got {vals[key]!r}", code="invalid", status=422)
    for key in ("accountant", "accountant_version"):
        if not isinstance(spend[key], str) or len(spend[key]) > 32:
            raise ServiceError(f"privacy spend {key} must be a string of at most 32 characters", code="invalid", status=422)
        vals[key] = spend[key]
    engine = spend.get("dp_engine", "")
    if not isinstance(engine, str) or not DP_ENGINE_RE.fullmatch(engine):
        raise ServiceError(f"privacy spend dp_engine must be the node's DP-SGD engine name (letters, digits, '.', '_', "
                           f"'-'; at most 32), e.g. \"fused\" or \"ew\"; got {str(engine)[:40]!r}", code="invalid",
                           status=422)
    vals["dp_engine"] = engine
    return vals


def _check_reuse(job: TrainingJob, hospital: Hospital, vals: dict, reuses: Any) -> int:
    """A retry attempt that re-sends the update of an earlier attempt of the same round: no new
    privacy cost (post-processing). The earlier job must be this hospital's, in this study, of the
    same round number, an earlier attempt, with its spend recorded; the spend adds nothing."""
    if isinstance(reuses, bool) or not isinstance(reuses, int):
        raise ServiceError("privacy spend reuses_job must be the integer id of the earlier job", code="invalid", status=422)
    earlier = (TrainingJob.objects.select_related("round").filter(pk=reuses, hospital=hospital,
                                                                  round__study_id=job.round.study_id).first())
    if earlier is None or earlier.round.number != job.round.number or earlier.round.attempt >= job.round.attempt:
        raise ServiceError(f"reuses_job {reuses} is not an earlier attempt of round {job.round.number} by this hospital "
                           "in this study", code="invalid_reuse", status=422)
    if not PrivacySpend.objects.filter(job=earlier).exists():
        raise ServiceError(f"reuses_job {reuses} has no recorded privacy spend: report that job's spend first",
                           code="invalid_reuse", status=422)
    if vals["steps"] != 0 or (vals["epsilon_round"] or 0.0) != 0.0:
        raise ServiceError("a spend that reuses an earlier job's update costs nothing: send steps 0 and epsilon_round 0",
                           code="invalid_reuse", status=422)
    return earlier.pk


def _check_cumulative(study: Study, job: TrainingJob, hospital: Hospital, epsilon: float) -> None:
    """The cumulative epsilon never decreases from one job to the next and stays within the budget."""
    cap = study.epsilon if hospital.max_epsilon is None else min(study.epsilon, hospital.max_epsilon)
    if epsilon > cap + EPS_TOL:
        raise ServiceError(f"cumulative epsilon {epsilon:g} is above this hospital's budget {cap:g} in this study: "
                           "the update must not be used", code="over_budget", status=422)
    mine = PrivacySpend.objects.filter(job__hospital=hospital, job__round__study=study)
    before = max(mine.filter(job_id__lt=job.pk).values_list("epsilon", flat=True), default=0.0)
    after = min(mine.filter(job_id__gt=job.pk).values_list("epsilon", flat=True), default=math.inf)
    if epsilon < before - EPS_TOL or epsilon > after + EPS_TOL:
        raise ServiceError(f"cumulative epsilon {epsilon:g} would go backwards: this hospital already reported "
                           f"{before:g} for an earlier job" + (f" and {after:g} for a later one" if after < math.inf else ""),
                           code="epsilon_decreased", status=422)


def privacy_spend_record(*, job: TrainingJob, hospital: Hospital, spend: dict) -> PrivacySpend:
    """Check and record a job's privacy spend (idempotent: a repeated report returns the first).
    A refusal is a 422 ServiceError and leaves a privacy.spend_refused audit event."""
    study = job.round.study
    existing = PrivacySpend.objects.filter(job=job).first()
    if existing is not None:
        return existing  # a retried report after a crash: the first one stands
    try:
        vals = _parse(spend)
        reuses = _check_reuse(job, hospital, vals, spend["reuses_job"]) if spend.get("reuses_job") is not None else None
        _check_cumulative(study, job, hospital, vals["epsilon"])
    except ServiceError as exc:
        _audit_refusal(study, "privacy.spend_refused", hospital, str(exc), code=exc.code, round=job.round.number,
                       attempt=job.round.attempt, job=job.pk)
        raise
    with transaction.atomic():
        existing = PrivacySpend.objects.select_for_update().filter(job=job).first()
        if existing is not None:
            return existing
        job = TrainingJob.objects.select_related("round").get(pk=job.pk)
        late = job.status not in ON_TIME
        ps = PrivacySpend.objects.create(job=job, late=late, reuses_job_id=reuses, **vals)
        _study_audit(study, "privacy.spent", actor_label(hospital=hospital), obj=ps, hospital_id=hospital.pk,
                     data={"round": job.round.number, **vals, "budget": study.epsilon, "over_budget": False,
                           "late": late, "job_status": job.status, "reuses_job": reuses})
        enqueue_on_commit(RECOMPUTE_PRIVACY, study.pk)
    return ps


def exclude_unbacked_uploads(study: Study, rnd, uploaded: list[TrainingJob]) -> set[int]:
    """At round close (inside its transaction): the uploads whose job has no recorded spend, or a
    spend above the hospital's budget, are left out of the aggregate (their job is marked refused
    with the reason, an update.rejected event each, listed among the report's problems). Returns
    the ids of the jobs left out."""
    spends = {ps.job_id: ps for ps in PrivacySpend.objects.filter(job__in=uploaded)}
    caps = dict(Hospital.objects.filter(pk__in=[j.hospital_id for j in uploaded]).values_list("pk", "max_epsilon"))
    out: set[int] = set()
    for job in uploaded:
        ps = spends.get(job.pk)
        cap = study.epsilon if caps.get(job.hospital_id) is None else min(study.epsilon, caps[job.hospital_id])
        if ps is None:
            code, reason = "spend_missing", "no privacy spend was recorded for this update: it is left out of the aggregate"
        elif not ps.epsilon <= cap + EPS_TOL:
            code, reason = "over_budget", (f"the recorded cumulative epsilon {ps.epsilon:g} is above the budget {cap:g}: "
                                           "the update is left out of the aggregate")
        else:
            continue
        TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.REFUSED, reason_code=code, reason=reason)
        _study_audit(study, "update.rejected", "system", obj=job, hospital_id=job.hospital_id,
                     data={"round": rnd.number, "attempt": rnd.attempt, "code": code, "reason": reason,
                           "stage": "round_close"})
        out.add(job.pk)
    return out
