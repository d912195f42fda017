"""Aggregation: add a round's encrypted updates (the platform never decrypts) and store the
encrypted aggregate, in one task or, for a large model, one task per chunk of ciphertext parts."""

from __future__ import annotations

import hashlib
import logging
import time

from django.db import IntegrityError, transaction
from django.utils import timezone

from fedproto import wire
from fedproto.codec import get_codec
from fedproto.errors import CodecError

from ..models import Aggregate, AggregateChunk, EncryptedUpdate, HEContext, Round, TrainingJob
from . import secagg, storage
from .common import ADVANCE_STUDY, _study_audit, enqueue_on_commit
from .lifecycle import _advance_in_transaction
from .rounds import _chunk_layout

log = logging.getLogger(__name__)


def _upload_label(u: EncryptedUpdate) -> str:
    return f"stored upload of job {u.job_id}"


def _counted_updates(rnd: Round):
    """The round's uploads that count: their job is still uploaded (not left out at close for a missing
    or over-budget spend, nor rejected at aggregation)."""
    return EncryptedUpdate.objects.filter(job__round=rnd, job__status=TrainingJob.Status.UPLOADED)


def round_aggregate(*, round_id: int) -> Aggregate | None:
    """Add the round's ciphertexts (the platform never decrypts) and store the encrypted aggregate."""
    rnd = Round.objects.select_related("study").get(pk=round_id)
    if rnd.status != Round.Status.AGGREGATING or Aggregate.objects.filter(round=rnd).exists():
        return None
    if not secagg.ready_to_aggregate(rnd):
        return None  # a distributed round: aggregated once the survivors' unmask shares gave its correction
    study = rnd.study
    ctx_row = HEContext.objects.get(study=study)
    codec = get_codec(study.encryption["codec"])
    ctx = codec.load_params(bytes(ctx_row.public_params))
    updates = list(_counted_updates(rnd).select_related("job").order_by("job__hospital_id"))

    def read_upload(u: EncryptedUpdate) -> list[bytes]:
        return wire.unpack_parts(storage.read_verified(u.path, u.sha256, label=_upload_label(u)))

    t0 = time.perf_counter()
    good = updates
    try:  # fast path: one streaming pass that fully deserialises (verifies) and adds every ciphertext
        parts = codec.aggregate(ctx, (read_upload(u) for u in updates), max_uploads=study.encryption.get("max_hospitals"))
    except CodecError:
        # Find the offending upload(s), record why, and aggregate the rest if the quorum still holds.
        bad: list[tuple[EncryptedUpdate, str]] = []
        good = []
        for u in updates:
            try:
                codec.aggregate(ctx, [read_upload(u)])
                good.append(u)
            except CodecError as exc:
                bad.append((u, str(exc)))
        with transaction.atomic():
            for u, why in bad:
                TrainingJob.objects.filter(pk=u.job_id).update(status=TrainingJob.Status.REFUSED,
                                                               reason_code="invalid_ciphertext",
                                                               reason=f"rejected at aggregation: {why}")
                _study_audit(study, "update.rejected", "system", obj=u.job, hospital_id=u.job.hospital_id,
                             data={"round": rnd.number, "code": "invalid_ciphertext", "reason": why,
                                   "stage": "aggregation"})
        # A distributed round's correction is for exactly its survivors U2: without one of them the
        # sum cannot be unmasked (each node answers one survivor set per round), so the attempt fails.
        if len(good) < study.quorum or (bad and secagg.is_distributed(study)):
            with transaction.atomic():
                Round.objects.filter(pk=rnd.pk).update(status=Round.Status.FAILED,
                                                       status_reason="too few valid updates after full verification")
                _study_audit(study, "round.failed", "system", obj=rnd,
                             data={"round": rnd.number, "reason": "too few valid updates after full verification"})
                enqueue_on_commit(ADVANCE_STUDY, study.pk)
            return None
        parts = codec.aggregate(ctx, (read_upload(u) for u in good), max_uploads=study.encryption.get("max_hospitals"))
    seconds = time.perf_counter() - t0
    return _store_aggregate(rnd, parts, [u.job.hospital_id for u in good], seconds)


def _store_aggregate(rnd: Round, parts: list[bytes], contributors: list[int], seconds: float) -> Aggregate | None:
    """Write the encrypted aggregate, mark the round done and open the next one, in one transaction."""
    study = rnd.study
    frame = wire.pack_parts(parts)
    path = storage.aggregate_path(rnd)
    storage.atomic_write(path, frame)
    with transaction.atomic():
        if not Round.objects.filter(pk=rnd.pk, status=Round.Status.AGGREGATING).update(
                status=Round.Status.DONE, done_at=timezone.now()):
            return None
        agg = Aggregate.objects.create(round=rnd, path=storage.relative(path), n_parts=len(parts),
                                       size_bytes=len(frame), sha256=hashlib.sha256(frame).hexdigest(),
                                       n_contributors=len(contributors), contributors=contributors, seconds=seconds)
        _study_audit(study, "round.aggregated", "system", obj=agg,
                     data={"round": rnd.number, "attempt": rnd.attempt, "contributors": contributors,
                           "bytes": len(frame), "sha256": agg.sha256, "seconds": round(seconds, 4)})
        _advance_in_transaction(study)
    return agg


def missing_chunks(*, round_id: int) -> list[int]:
    """Chunk indexes of a chunked aggregation that have no stored result yet ([] if not chunked)."""
    layout = _chunk_layout(Round.objects.get(pk=round_id))
    if not layout:
        return []
    have = set(AggregateChunk.objects.filter(round_id=round_id).values_list("index", flat=True))
    return [i for i in range(len(layout)) if i not in have]


def round_aggregate_chunk(*, round_id: int, index: int) -> Aggregate | None:
    """Add one range of ciphertext parts over the round's uploads (one Celery task per range, so
    several workers share a large model); the chunk that completes the set assembles the
    aggregate. Any problem falls back to round_aggregate, which finds and records bad uploads."""
    rnd = Round.objects.select_related("study").get(pk=round_id)
    if rnd.status != Round.Status.AGGREGATING or Aggregate.objects.filter(round=rnd).exists():
        return None
    if not secagg.ready_to_aggregate(rnd):
        return None
    study = rnd.study
    layout = _chunk_layout(rnd)
    if not layout or not 0 <= index < len(layout):
        return round_aggregate(round_id=round_id)
    if not AggregateChunk.objects.filter(round=rnd, index=index).exists():
        codec = get_codec(study.encryption["codec"])
        ctx = codec.load_params(bytes(HEContext.objects.get(study=study).public_params))
        updates = list(_counted_updates(rnd).order_by("job__hospital_id"))

        def read_range(u: EncryptedUpdate) -> list[bytes]:
            chunk = storage.chunk_index_from_json(u.chunks)[index]
            data = storage.read_range_verified(u.path, chunk.offset, chunk.n_bytes, chunk.sha256, label=_upload_label(u))
            return wire.unpack_bare_parts(data, chunk.n_parts)

        t0 = time.perf_counter()
        try:
            parts = codec.aggregate(ctx, (read_range(u) for u in updates), max_uploads=study.encryption.get("max_hospitals"))
        except CodecError as exc:
            log.warning("round %s chunk %s: %s; aggregating the round in one task", rnd.pk, index, exc)
            return round_aggregate(round_id=round_id)
        seconds = time.perf_counter() - t0
        path = storage.chunk_path(rnd, index)
        storage.atomic_write(path, wire.pack_parts(parts))
        try:
            with transaction.atomic():
                AggregateChunk.objects.create(round=rnd, index=index, path=storage.relative(path),
                                              n_parts=len(parts), seconds=seconds)
        except IntegrityError:
            pass  # a redelivered task already stored this chunk (same content)
    done = list(AggregateChunk.objects.filter(round=rnd).order_by("index"))
    if [c.index for c in done] != list(range(len(layout))):
        return None
    parts = []
    for c in done:
        parts.extend(wire.unpack_parts(storage.read(c.path)))
    contributors = list(_counted_updates(rnd).order_by("job__hospital_id")
                        .values_list("job__hospital_id", flat=True))
    return _store_aggregate(rnd, parts, contributors, sum(c.seconds for c in done))
