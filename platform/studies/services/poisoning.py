"""A poisoned aggregate: an upload encrypted under another key passes every platform check (the
platform cannot decrypt), and the aggregate then decrypts to nothing for everyone.

A key holder that finds the aggregate of a round does not decrypt fetches the round's uploads
(round_uploads), computes each one's noise budget under the study key (a check that decodes no
value) and reports the budgets (poison_report_record). An upload is excluded when at least
MIN_ACCUSERS other hospitals report it at zero budget and they outnumber those that report it
decrypting: the culprit's own report (under its key every honest upload looks foreign) cannot
exclude anyone on its own. The round is then re-aggregated without the culprit (or the study
fails naming it when the quorum no longer holds), and the culprit is withdrawn from the study.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import actor_label
from consortia.models import Hospital
from fedproto import wire
from fedproto.codec import get_codec
from fedproto.errors import CodecError

from ..models import Aggregate, EncryptedUpdate, HEContext, Participation, Round, Study, TrainingJob
from . import storage
from .common import CLOSE_ROUND, _study_audit, enqueue_on_commit
from .errors import ServiceError
from .lifecycle import study_fail

log = logging.getLogger(__name__)

MIN_ACCUSERS = 2  # distinct other key holders that must see an upload at zero budget
REPORTED = "aggregate.poison_reported"
MAX_BUDGET_BITS = 4096


def _key_holder(study: Study, hospital: Hospital) -> None:
    if not Participation.objects.filter(study=study, hospital=hospital, state=Participation.State.APPROVED).exists():
        raise ServiceError("only an approved participant of this study (a key holder) may check its uploads",
                           code="not_participant", status=404)


def _done_round(study: Study, number: int) -> tuple[Round, Aggregate]:
    rnd = Round.objects.filter(study=study, number=number, status=Round.Status.DONE).first()
    agg = Aggregate.objects.filter(round=rnd).first() if rnd is not None else None
    if rnd is None or agg is None:
        raise ServiceError(f"round {number} has no aggregate", code="not_ready", status=409)
    return rnd, agg


def _contributing_uploads(rnd: Round, agg: Aggregate) -> list[EncryptedUpdate]:
    return list(EncryptedUpdate.objects.filter(job__round=rnd, job__hospital_id__in=list(agg.contributors))
                .select_related("job").order_by("job__hospital_id"))


def round_uploads(*, study: Study, hospital: Hospital, number: int) -> list[EncryptedUpdate]:
    """The uploads in round ``number``'s aggregate, for a key holder that checks their noise budgets."""
    _key_holder(study, hospital)
    rnd, agg = _done_round(study, number)
    return _contributing_uploads(rnd, agg)


def round_upload(*, study: Study, hospital: Hospital, number: int, job_id: int) -> EncryptedUpdate:
    for u in round_uploads(study=study, hospital=hospital, number=number):
        if u.job_id == job_id:
            return u
    raise ServiceError(f"job {job_id} has no upload in the aggregate of round {number}", code="not_found", status=404)


def _clean_budgets(raw: Any, jobs: set[int]) -> dict[int, int]:
    if not isinstance(raw, dict) or not raw:
        raise ServiceError('budgets must be an object {"<job id>": <noise budget bits>, ...}', code="invalid", status=422)
    out: dict[int, int] = {}
    for k, v in raw.items():
        try:
            job_id = int(k)
        except (TypeError, ValueError):
            raise ServiceError(f"budgets: {k!r} is not a job id", code="invalid", status=422) from None
        if job_id not in jobs:
            raise ServiceError(f"budgets: job {job_id} has no upload in this round's aggregate", code="invalid", status=422)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_BUDGET_BITS:
            raise ServiceError(f"budgets: job {job_id}: {v!r} is not a noise budget (an integer number of bits, "
                               f"0..{MAX_BUDGET_BITS})", code="invalid", status=422)
        out[job_id] = v
    return out


def _verdicts(study: Study, rnd: Round, agg: Aggregate, owners: dict[int, int]) -> dict[int, list[int]]:
    """job id -> hospitals accusing it, for the jobs excluded by the reports on this aggregate."""
    latest: dict[int, dict[int, int]] = {}  # reporter -> its budgets (its last report counts)
    for ev in AuditEvent.objects.filter(study_id=study.pk, action=REPORTED).order_by("stream", "seq"):
        d = ev.data or {}
        if d.get("round") == rnd.number and d.get("aggregate_sha256") == agg.sha256 and ev.hospital_id:
            latest[int(ev.hospital_id)] = {int(k): int(v) for k, v in d.get("budgets", {}).items()}
    out: dict[int, list[int]] = {}
    for job_id, owner in owners.items():
        accusers = sorted(h for h, b in latest.items() if h != owner and b.get(job_id, 1) <= 0)
        defenders = [h for h, b in latest.items() if h != owner and b.get(job_id, 0) > 0]
        if len(accusers) >= MIN_ACCUSERS and len(accusers) > len(defenders):
            out[job_id] = accusers
    return out


def poison_report_record(*, study: Study, hospital: Hospital, number: int, aggregate_sha256: str, budgets: Any,
                         error: str = "") -> dict:
    """Record a key holder's noise-budget check of round ``number``'s uploads; exclude the uploads
    that enough other key holders find foreign and re-aggregate the round without them."""
    _key_holder(study, hospital)
    rnd, agg = _done_round(study, number)
    if aggregate_sha256 != agg.sha256:
        return {"round": number, "status": "stale", "aggregate_sha256": agg.sha256,
                "detail": "the aggregate was replaced since; download it again"}
    uploads = _contributing_uploads(rnd, agg)
    owners = {u.job_id: u.job.hospital_id for u in uploads}
    clean = _clean_budgets(budgets, set(owners))
    with transaction.atomic():
        _study_audit(study, REPORTED, actor_label(hospital=hospital), obj=agg, hospital_id=hospital.pk,
                     data={"round": number, "aggregate_sha256": agg.sha256,
                           "budgets": {str(k): v for k, v in sorted(clean.items())}, "error": str(error)[:500]})
    with transaction.atomic():
        agg = Aggregate.objects.select_for_update().get(pk=agg.pk)
        if agg.sha256 != aggregate_sha256:
            return {"round": number, "status": "stale", "aggregate_sha256": agg.sha256}
        excluded = _verdicts(study, rnd, agg, owners)
        if not excluded:
            return {"round": number, "status": "recorded", "aggregate_sha256": agg.sha256}
        return _exclude_and_reaggregate(study, rnd, agg, [u for u in uploads if u.job_id not in excluded],
                                        {u.job_id: u for u in uploads if u.job_id in excluded}, excluded)


def _exclude_and_reaggregate(study: Study, rnd: Round, agg: Aggregate, good: list[EncryptedUpdate],
                             bad: dict[int, EncryptedUpdate], accusers: dict[int, list[int]]) -> dict:
    names = dict(Hospital.objects.filter(pk__in=[u.job.hospital_id for u in bad.values()]).values_list("pk", "name"))
    culprits = [{"job_id": j, "hospital_id": u.job.hospital_id, "hospital": names.get(u.job.hospital_id, ""),
                 "reported_by": accusers[j]} for j, u in sorted(bad.items())]
    who = ", ".join(f"{c['hospital']} (job {c['job_id']})" for c in culprits)
    why = (f"round {rnd.number}'s aggregate did not decrypt under the study key: the upload of {who} is not "
           f"encrypted under it (zero noise budget, reported by {len(culprits[0]['reported_by'])}+ other key holders)")
    for c in culprits:
        TrainingJob.objects.filter(pk=c["job_id"]).update(status=TrainingJob.Status.REFUSED,
                                                          reason_code="foreign_ciphertext", reason=why[:4000])
        _study_audit(study, "update.rejected", "system", obj=bad[c["job_id"]].job, hospital_id=c["hospital_id"],
                     data={"round": rnd.number, "code": "foreign_ciphertext", "stage": "noise_check",
                           "reason": why, "reported_by": c["reported_by"]})
        _withdraw(study, c["hospital_id"], why)
    if len(good) < study.quorum:
        reason = f"{why}; {len(good)} valid update(s) remain, below the quorum of {study.quorum}"
        Round.objects.filter(pk=rnd.pk).update(status_reason=reason[:4000])
        _study_audit(study, "round.poisoned", "system", obj=rnd,
                     data={"round": rnd.number, "culprits": culprits, "reaggregated": False, "reason": reason})
        transaction.on_commit(lambda: study_fail(study=study, reason=reason))
        return {"round": rnd.number, "status": "failed", "culprits": culprits, "reason": reason}
    codec = get_codec(study.encryption["codec"])
    ctx = codec.load_params(bytes(HEContext.objects.get(study=study).public_params))
    try:
        uploads = (wire.unpack_parts(storage.read_verified(u.path, u.sha256, label=f"upload of job {u.job_id}"))
                   for u in good)
        parts = codec.aggregate(ctx, uploads, max_uploads=study.encryption.get("max_hospitals"))
    except CodecError as exc:  # checked when first aggregated; a file changed on disk since
        raise ServiceError(f"re-aggregating round {rnd.number} failed: {exc}", code="reaggregation_failed",
                           status=409) from exc
    frame = wire.pack_parts(parts)
    path = storage.aggregate_path(rnd).with_name(f"round_{rnd.number}_{rnd.attempt}_reaggregated_{len(good)}.bin")
    storage.atomic_write(path, frame)
    old_sha = agg.sha256
    contributors = [u.job.hospital_id for u in good]
    agg.path, agg.n_parts, agg.size_bytes = storage.relative(path), len(parts), len(frame)
    agg.sha256, agg.contributors, agg.n_contributors = hashlib.sha256(frame).hexdigest(), contributors, len(contributors)
    agg.save(update_fields=["path", "n_parts", "size_bytes", "sha256", "contributors", "n_contributors"])
    reason = f"re-aggregated without {who}: {why}"
    Round.objects.filter(pk=rnd.pk).update(status_reason=reason[:4000])
    _study_audit(study, "round.reaggregated", "system", obj=agg,
                 data={"round": rnd.number, "culprits": culprits, "old_sha256": old_sha, "sha256": agg.sha256,
                       "contributors": contributors, "reason": reason})
    return {"round": rnd.number, "status": "reaggregated", "culprits": culprits, "aggregate_sha256": agg.sha256}


def _withdraw(study: Study, hospital_id: int, why: str) -> None:
    """The culprit takes no further part: no more jobs, and open rounds do not wait for it."""
    Participation.objects.filter(study=study, hospital_id=hospital_id).update(
        state=Participation.State.WITHDRAWN, reason=f"excluded: {why}"[:4000], decided_by="system",
        decided_at=timezone.now())
    _study_audit(study, "participation.excluded", "system", hospital_id=hospital_id, data={"reason": why})
    for job in TrainingJob.objects.filter(round__study=study, hospital_id=hospital_id,
                                          status=TrainingJob.Status.DISPATCHED):
        TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.EXPIRED, reason_code="excluded",
                                                     reason=f"hospital excluded: {why}"[:4000], finished_at=timezone.now())
        enqueue_on_commit(CLOSE_ROUND, job.round_id)
