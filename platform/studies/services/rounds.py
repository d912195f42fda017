"""Rounds: open one (a training job per approved hospital), take the nodes' answers (refusal,
privacy spend, encrypted update) and close it once every job is answered or the deadline passed."""

from __future__ import annotations

from datetime import timedelta
from typing import BinaryIO, NoReturn

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import actor_label
from consortia.models import Hospital
from fedproto import wire
from fedproto.codec import get_codec
from fedproto.errors import CodecError
from fedproto.statistics import STATISTICS_ROUND, round_length

from ..models import EncryptedUpdate, HEContext, Participation, PrivacySpend, Round, Study, TrainingJob
from . import secagg, storage
from .common import (
    ADVANCE_STUDY,
    AGGREGATE_CHUNK,
    AGGREGATE_ROUND,
    CLOSE_ROUND,
    CLOSE_ROUND_AT_DEADLINE,
    _study_audit,
    enqueue,
    enqueue_on_commit,
)
from .errors import ServiceError
from .platform_clock import platform_away, platform_resumed_within
from .spend import exclude_unbacked_uploads


def round_open(*, study: Study, number: int, attempt: int) -> Round | None:
    """Open a round and dispatch one training job per approved hospital (inside a transaction)."""
    if Study.objects.filter(pk=study.pk, status=Study.Status.RUNNING).count() == 0:
        return None
    try:
        with transaction.atomic():
            rnd = Round.objects.create(study=study, number=number, attempt=attempt, status=Round.Status.COLLECTING,
                                       collecting_at=timezone.now(),
                                       deadline=timezone.now() + timedelta(seconds=study.round_deadline_s))
    except IntegrityError:
        return None  # already opened by a concurrent worker
    hospitals = list(Participation.objects.filter(study=study, state=Participation.State.APPROVED)
                     .select_related("hospital").values_list("hospital_id", flat=True))
    TrainingJob.objects.bulk_create([TrainingJob(round=rnd, hospital_id=h) for h in hospitals])
    if secagg.is_distributed(study) and secagg.secagg_create(rnd, hospitals) is None:
        enqueue_on_commit(ADVANCE_STUDY, study.pk)  # the round cannot run its exchange: failed, with the reason
        return rnd
    _study_audit(study, "round.opened", "system", obj=rnd,
                 data={"round": number, "attempt": attempt,
                       "kind": "statistics" if number == STATISTICS_ROUND else "training",
                       "jobs_dispatched": len(hospitals), "hospitals": hospitals,
                       "deadline": rnd.deadline.isoformat()})
    enqueue_on_commit(CLOSE_ROUND_AT_DEADLINE, rnd.pk)
    return rnd


STATISTICS_UNUSABLE = "statistics_unusable"  # a node's refusal code: the round-0 sum cannot be used


def first_round(study: Study) -> int:
    """The study's first round: 0 (the statistics round) when its schema standardises or imputes with
    federated statistics, else 1 (fedproto.statistics.enabled; distributed DP has none yet)."""
    from fedproto import statistics

    return STATISTICS_ROUND if statistics.enabled(study.schema) and study.privacy_mode != "distributed" else 1


def job_refuse(*, job: TrainingJob, hospital: Hospital, reason: str, code: str) -> TrainingJob:
    study = job.round.study
    with transaction.atomic():
        n = TrainingJob.objects.filter(pk=job.pk, hospital=hospital, status=TrainingJob.Status.DISPATCHED).update(
            status=TrainingJob.Status.REFUSED, reason=reason[:4000], reason_code=code[:32], finished_at=timezone.now())
        if not n:
            job.refresh_from_db()
            if job.status == TrainingJob.Status.REFUSED:
                return job
            raise ServiceError(f"job {job.pk} is {job.status}; it can no longer be refused", code="wrong_state")
        _study_audit(study, "job.refused", actor_label(hospital=hospital), obj=job, hospital_id=hospital.pk,
                     data={"round": job.round.number, "attempt": job.round.attempt, "code": code, "reason": reason[:4000]})
        enqueue_on_commit(CLOSE_ROUND, job.round_id)
    if code == STATISTICS_UNUSABLE:
        # The decrypted sum every key holder derives the constants from cannot be used: no hospital can
        # prepare its data, and a retry would only spend more budget. The study fails, saying why.
        from .lifecycle import study_fail

        study_fail(study=study, reason=f"the federated statistics are unusable ({hospital.name}: {reason[:500]})")
    job.refresh_from_db()
    return job


# ---------------------------------------------------------------- encrypted updates

def _reject_update(study: Study, job: TrainingJob, hospital: Hospital, reason: str, code: str,
                   status: int) -> NoReturn:
    with transaction.atomic():
        _study_audit(study, "update.rejected", actor_label(hospital=hospital), obj=job, hospital_id=hospital.pk,
                     data={"round": job.round.number, "attempt": job.round.attempt, "code": code, "reason": reason})
    raise ServiceError(reason, code=code, status=status)


def _inspect_upload(received: storage.Received, codec, ctx, *, expected_parts: int, n_params: int) -> list[storage.ChunkRange]:
    """Check the frame, the part count and each part's header/parameters (cheap), and index the
    parts by chunk (byte range + hash) so several workers can each add one range. CodecError says
    what is wrong."""
    with open(received.path, "rb") as fh:
        n = wire.read_frame_header(fh)
        if n != expected_parts:
            raise CodecError(f"update has {n} ciphertext parts; this study's model ({n_params} parameters) "
                             f"needs exactly {expected_parts}")
        indexer = storage.ChunkIndexer(chunk_parts=int(settings.AGGREGATE_CHUNK_PARTS), offset=fh.tell())
        for i, part in enumerate(wire.iter_frame_parts(fh, n, max_part_bytes=codec.max_part_bytes())):
            try:
                codec.inspect_part(ctx, part)
            except CodecError as exc:
                raise CodecError(f"part {i}: {exc}") from None
            indexer.add(part)
    return indexer.index()


def _replayed_from(study: Study, job: TrainingJob, sha256: str) -> int | None:
    """The job whose accepted update in this study has exactly these bytes, if any. Fresh encryption is
    randomised, so equal bytes mean a copy. The one exception: a retry attempt re-sending the update
    of the earlier job its spend names (reuses_job), which costs and reveals nothing new."""
    other = (EncryptedUpdate.objects.filter(job__round__study=study, sha256=sha256).exclude(job=job)
             .values_list("job_id", "job__hospital_id").first())
    if other is None:
        return None
    reused = PrivacySpend.objects.filter(job=job, job__hospital_id=other[1]).values_list("reuses_job_id", flat=True).first()
    return None if reused == other[0] else other[0]


def update_accept(*, job: TrainingJob, hospital: Hospital, stream: BinaryIO, content_length: int | None) -> EncryptedUpdate:
    """Stream an encrypted update to storage, check it cheaply, and record it.

    The request path checks framing, part count and each part's header/parameters (cheap); the full
    deserialisation happens once, in the aggregation task.
    """
    rnd = job.round
    study = rnd.study
    if job.hospital_id != hospital.pk:
        raise ServiceError("no such job for this node", code="not_found", status=404)
    if job.status == TrainingJob.Status.UPLOADED:
        _reject_update(study, job, hospital, "an update for this job was already accepted (duplicate upload)", "duplicate", 409)
    if job.status != TrainingJob.Status.DISPATCHED or rnd.status != Round.Status.COLLECTING:
        _reject_update(study, job, hospital, f"job {job.pk} is {job.status} and round {rnd.number} is {rnd.status}: "
                       "it no longer accepts updates", "job_closed", 409)
    if content_length is None:
        _reject_update(study, job, hospital, "send the update with a Content-Length header", "length_required", 411)
    if content_length > settings.MAX_UPDATE_BYTES:
        _reject_update(study, job, hospital, f"update is {content_length} bytes; the limit is {settings.MAX_UPDATE_BYTES}",
                       "too_large", 413)
    if secagg.is_distributed(study):
        why = secagg.check_upload(job, hospital)
        if why is not None:
            _reject_update(study, job, hospital, why, "secagg_not_shared", 409)
    codec = get_codec(study.encryption["codec"])
    length = round_length(study.schema, study.n_params, rnd.number)  # round 0: the statistics vector
    expected_parts = codec.n_parts(study.encryption, length)
    # The size is known from the codec and the model: a body that cannot be this update is refused
    # from its Content-Length, before a byte of it is read.
    smallest, largest = codec.update_size(study.encryption, length)
    if not smallest <= content_length <= largest:
        need = (f"exactly {smallest}" if smallest == largest else f"{smallest} to {largest}")
        what = "statistics vector" if rnd.number == STATISTICS_ROUND else "model"
        _reject_update(study, job, hospital, f"update is {content_length} bytes; an update of this study's {what} "
                       f"({length} values, {expected_parts} {codec.name} parts) is {need} bytes",
                       "too_large" if content_length > largest else "wrong_size", 413 if content_length > largest else 422)
    ctx_row = HEContext.objects.filter(study=study).first()
    ctx = codec.load_params(bytes(ctx_row.public_params))
    received = storage.receive(storage.updates_dir(rnd), f".job_{job.pk}_", stream, content_length)
    try:
        if received.size != content_length:
            raise CodecError(f"upload truncated: received {received.size} of {content_length} bytes")
        chunks = _inspect_upload(received, codec, ctx, expected_parts=expected_parts, n_params=length)
        replayed = _replayed_from(study, job, received.sha256)
    except CodecError as exc:
        storage.discard(received)
        _reject_update(study, job, hospital, f"encrypted update rejected: {exc}", "invalid_ciphertext", 422)
    except BaseException:
        storage.discard(received)
        raise
    if replayed is not None:
        storage.discard(received)
        _reject_update(study, job, hospital, f"this ciphertext is byte for byte the update already accepted for job {replayed} "
                       "in this study (a replay): encrypt this job's own update", "replay", 409)
    final = storage.update_path(rnd, job.pk)
    with transaction.atomic():
        claimed = TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.DISPATCHED,
                                             round__status=Round.Status.COLLECTING).update(
            status=TrainingJob.Status.UPLOADED, finished_at=timezone.now())
        if not claimed:
            storage.discard(received)
            raise ServiceError("this job no longer accepts an update (duplicate or closed)", code="duplicate", status=409)
        storage.place(received, final)
        upd = EncryptedUpdate.objects.create(job=job, path=storage.relative(final), n_parts=expected_parts,
                                             size_bytes=received.size, sha256=received.sha256,
                                             chunks=storage.chunk_index_to_json(chunks) if len(chunks) > 1 else [])
        Round.objects.filter(pk=rnd.pk).update(n_updates=F("n_updates") + 1)
        _study_audit(study, "update.accepted", actor_label(hospital=hospital), obj=upd, hospital_id=hospital.pk,
                     data={"round": rnd.number, "attempt": rnd.attempt, "bytes": received.size, "sha256": upd.sha256,
                           "parts": expected_parts})
        transaction.on_commit(lambda: _close_if_answered(rnd.pk))
    return upd


def _close_if_answered(round_id: int) -> None:
    """After an upload committed: enqueue the close only when no job of the round is still waiting.
    One close task per round instead of one per upload (with 200 hospitals the queue of closes was
    the round's critical path). Runs after this upload's commit, so the last upload to commit sees
    no pending job; a deadline or a refusal closes the round through their own paths."""
    if not TrainingJob.objects.filter(round_id=round_id, status=TrainingJob.Status.DISPATCHED).exists():
        enqueue(CLOSE_ROUND, round_id)


# ---------------------------------------------------------------- closing

def _chunk_layout(rnd: Round) -> list[tuple[int, int]] | None:
    """The chunk layout shared by every upload of the round, [(first part, parts), ...], or None
    (aggregate in one task). See storage.chunk_layout."""
    return storage.chunk_layout(storage.chunk_index_from_json(chunks) for chunks in
                                EncryptedUpdate.objects.filter(job__round=rnd, job__status=TrainingJob.Status.UPLOADED)
                                .values_list("chunks", flat=True))


def _offline_hospitals(rnd: Round, hospital_ids: set[int], now) -> set[int]:
    """Those of ``hospital_ids`` whose node is gone: no contact (heartbeat or work poll) within
    settings.NODE_ONLINE_WINDOW_S and none since the round opened. A node that fetched its job
    after the round opened has been seen since, so one busy training is still waited for."""
    if platform_resumed_within(now, settings.NODE_ONLINE_WINDOW_S):
        return set()  # every node looks offline right after the platform itself was away
    seen_after = now - timedelta(seconds=settings.NODE_ONLINE_WINDOW_S)
    if rnd.collecting_at is not None:
        seen_after = min(seen_after, rnd.collecting_at)
    seen = set(Hospital.objects.filter(pk__in=hospital_ids, last_heartbeat__gte=seen_after).values_list("pk", flat=True))
    return hospital_ids - seen


def round_try_close(*, round_id: int, force_deadline: bool = False, inline_aggregate: bool = False) -> bool:
    """Close a collecting round when every job is answered or the deadline passed; then aggregate
    (quorum met) or fail the attempt. Idempotent. With ``inline_aggregate`` (the caller is a
    Celery task) a small aggregation (at most settings.INLINE_AGGREGATE_MAX_PART_LOADS ciphertext
    part loads, uploads x parts: one broker hop less per round) is not enqueued: True tells the
    caller to run round_aggregate itself right after (the reconciler covers a worker lost in
    between)."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().select_related("study").get(pk=round_id)
        if rnd.status != Round.Status.COLLECTING:
            return
        study = rnd.study
        jobs = list(TrainingJob.objects.filter(round=rnd))
        pending = [j for j in jobs if j.status == TrainingJob.Status.DISPATCHED]
        now = timezone.now()
        # Right after the platform itself was away, its reconciler extends the deadlines first.
        away = bool(pending) and not force_deadline and platform_away(now)
        past_deadline = rnd.deadline is not None and now >= rnd.deadline and not away
        uploaded = [j for j in jobs if j.status == TrainingJob.Status.UPLOADED]
        offline = set()
        if pending and not past_deadline and not force_deadline and not away:
            # Not worth waiting for: the quorum is in and every job still out belongs to a node gone offline.
            # A node that received its job (claimed_at) was seen since the round opened: it is waited for.
            unclaimed = {j.hospital_id for j in pending if j.claimed_at is None}
            offline = _offline_hospitals(rnd, unclaimed, now) if len(uploaded) >= study.quorum else set()
            if not offline or len(offline) < len({j.hospital_id for j in pending}):
                return False
        elif pending and not past_deadline and not force_deadline:
            return False
        if pending:
            reason = (f"the node was offline (no contact for over {settings.NODE_ONLINE_WINDOW_S} s, none since the round "
                      "opened) when the other updates were in" if offline else "no update before the round deadline")
            TrainingJob.objects.filter(pk__in=[j.pk for j in pending]).update(
                status=TrainingJob.Status.EXPIRED, reason=reason, finished_at=now)
        uploaded = [j for j in jobs if j.status == TrainingJob.Status.UPLOADED]
        left_out = exclude_unbacked_uploads(study, rnd, uploaded)  # no update without its valid spend
        uploaded = [j for j in uploaded if j.pk not in left_out]
        rnd.closed_at = now
        if len(uploaded) >= study.quorum:
            rnd.status = Round.Status.AGGREGATING
            rnd.save(update_fields=["status", "closed_at"])
            _study_audit(study, "round.closed", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "updates": len(uploaded),
                               "expired": [j.hospital_id for j in pending],
                               "refused": [j.hospital_id for j in jobs if j.status == TrainingJob.Status.REFUSED],
                               "left_out": sorted(j.hospital_id for j in jobs if j.pk in left_out),
                               **({"closed_early": "every job still out belonged to an offline node",
                                   "offline": sorted(offline)} if offline else {})})
            if secagg.is_distributed(study):
                # The survivors U2 are fixed: aggregation waits for their unmask shares (services/secagg.py).
                secagg.survivors_fix(rnd, [j.hospital_id for j in uploaded])
                return False
            codec = get_codec(study.encryption["codec"])
            loads = len(uploaded) * codec.n_parts(study.encryption, study.n_params)
            layout = _chunk_layout(rnd)
            if layout:
                for index in range(len(layout)):
                    enqueue_on_commit(AGGREGATE_CHUNK, rnd.pk, index)
                return False
            if inline_aggregate and loads <= settings.INLINE_AGGREGATE_MAX_PART_LOADS:
                return True
            enqueue_on_commit(AGGREGATE_ROUND, rnd.pk)
        else:
            rnd.status = Round.Status.FAILED
            rnd.status_reason = (f"{len(uploaded)} update(s) arrived, the quorum is {study.quorum}"
                                 + (" (deadline passed)" if pending else ""))
            rnd.save(update_fields=["status", "status_reason", "closed_at"])
            _study_audit(study, "round.failed", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "reason": rnd.status_reason})
            enqueue_on_commit(ADVANCE_STUDY, study.pk)
    return False
