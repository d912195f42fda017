"""Reading and verifying the audit trail."""

from __future__ import annotations

import json
from typing import Iterator

from django.db.models import Exists, Subquery

from .chain import ChainResult, legacy_data_text, verify_events
from .models import AuditEvent, AuditHead
from .services import stream_for


def event_as_dict(ev: AuditEvent) -> dict:
    """An event as the chain hashes it: "data" and "data_canonical" are the hashed record (for events
    written before data_canonical existed, recovered from the jsonb column); "data_column" is the
    jsonb copy, checked against the record by verify_events."""
    d = {
        "stream": ev.stream, "seq": ev.seq,
        "created_at": ev.created_at.isoformat(timespec="microseconds"),
        "actor": ev.actor, "action": ev.action, "object_type": ev.object_type,
        "object_id": ev.object_id, "consortium_id": ev.consortium_id, "study_id": ev.study_id,
        "hospital_id": ev.hospital_id, "data": ev.data, "prev_hash": ev.prev_hash, "hash": ev.hash,
    }
    if ev.data_canonical is None:
        d["data_canonical"] = legacy_data_text(d)
        d["data"] = json.loads(d["data_canonical"])
    else:
        d["data_canonical"] = ev.data_canonical
        d["data"] = json.loads(ev.data_canonical)
        d["data_column"] = ev.data
    return d


def stream_events(stream: str) -> Iterator[dict]:
    """The stream's events in stored order, read by one statement (one snapshot)."""
    # Ordered by primary key (insertion order), not seq, so a reordering is visible.
    for ev in AuditEvent.objects.filter(stream=stream).order_by("id").iterator(chunk_size=2000):
        yield event_as_dict(ev)


def stream_snapshot(stream: str) -> tuple[list[dict], tuple[int, str] | None]:
    """The stream's events and its recorded head (seq, hash), as of one moment.

    Head and events must come from one snapshot: read by two statements, an event committed in
    between made a live chain look truncated ("the chain ends at event #47 but the recorded head
    is #46"). They are read by ONE statement (the head as a scalar subquery on every event row), which
    every backend runs on a single snapshot, PostgreSQL in any isolation level, inside a caller's
    transaction or not, and SQLite (WAL) too, without locking out writers."""
    head_row = AuditHead.objects.filter(stream=stream)
    for _attempt in range(10):
        events, head = [], None
        qs = (AuditEvent.objects.filter(stream=stream).order_by("id")
              .annotate(head_seq=Subquery(head_row.values("seq")[:1]), head_hash=Subquery(head_row.values("hash")[:1])))
        for ev in qs.iterator(chunk_size=2000):
            if head is None and ev.head_seq is not None:
                head = (ev.head_seq, ev.head_hash)
            events.append(event_as_dict(ev))
        if events:
            return events, head
        # No event: the head alone, with whether events exist, again in one statement. Events that
        # appeared since the first read (a first append) mean: read again.
        row = head_row.annotate(has_events=Exists(AuditEvent.objects.filter(stream=stream))).values_list(
            "seq", "hash", "has_events").first()
        if row is None or not row[2]:
            return [], (row[0], row[1]) if row else None
    raise RuntimeError(f"audit stream {stream!r}: events kept appearing and disappearing while it was read")


def verify_stream(stream: str) -> ChainResult:
    events, head = stream_snapshot(stream)
    return verify_events(stream, events, expected_head=head)


def verify_study_chain(study_id: int) -> ChainResult:
    return verify_stream(stream_for(study_id))


def verify_all() -> list[ChainResult]:
    streams = set(AuditHead.objects.values_list("stream", flat=True)) | set(
        AuditEvent.objects.values_list("stream", flat=True).distinct())
    return [verify_stream(s) for s in sorted(streams)]


def study_events(study_id: int):
    return AuditEvent.objects.filter(stream=stream_for(study_id)).order_by("seq")
