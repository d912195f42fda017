"""Reading and verifying the audit trail."""

from __future__ import annotations

from typing import Iterator

from .chain import ChainResult, verify_events
from .models import AuditEvent, AuditHead
from .services import stream_for


def event_as_dict(ev: AuditEvent) -> dict:
    return {
        "stream": ev.stream, "seq": ev.seq,
        "created_at": ev.created_at.isoformat(timespec="microseconds"),
        "actor": ev.actor, "action": ev.action, "object_type": ev.object_type,
        "object_id": ev.object_id, "consortium_id": ev.consortium_id, "study_id": ev.study_id,
        "hospital_id": ev.hospital_id, "data": ev.data, "prev_hash": ev.prev_hash, "hash": ev.hash,
    }


def stream_events(stream: str) -> Iterator[dict]:
    # Ordered by primary key (insertion order), not seq, so a reordering is visible.
    for ev in AuditEvent.objects.filter(stream=stream).order_by("id").iterator(chunk_size=2000):
        yield event_as_dict(ev)


def verify_stream(stream: str) -> ChainResult:
    head = AuditHead.objects.filter(stream=stream).values_list("seq", "hash").first()
    return verify_events(stream, stream_events(stream), expected_head=tuple(head) if head else None)


def verify_study_chain(study_id: int) -> ChainResult:
    return verify_stream(stream_for(study_id))


def verify_all() -> list[ChainResult]:
    streams = set(AuditHead.objects.values_list("stream", flat=True)) | set(
        AuditEvent.objects.values_list("stream", flat=True).distinct())
    return [verify_stream(s) for s in sorted(streams)]


def study_events(study_id: int):
    return AuditEvent.objects.filter(stream=stream_for(study_id)).order_by("seq")
