"""Events that can repeat without bound (failed logins, refused enrolments), recorded without
letting anyone flood the append-only trail.

The first occurrence of a kind (a key: e.g. "failed login for user alice") in a window is recorded
as a normal event. Later occurrences in the same window are only counted (in AuditTally) and
written as ONE summary event, same action, whose data is the last occurrence's data plus
"count" (how many occurrences the event stands for), "first_at", "last_at" and, when some field
changed between them, "distinct" ({"ip": [up to 20 distinct values]}). An event without "count"
stands for one occurrence, so the events of a key always account for every occurrence.

A summary is written when its window has closed (by the next repeated event of any key, or by the
`audit.flush_summaries` beat task) or at once by flush_summary(key) (e.g. when a lock is taken).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from .chain import canonical_data
from .models import AuditEvent, AuditTally
from .services import append_event

MAX_DISTINCT = 20
_SCALARS = (str, int, float, bool, type(None))


def record_repeated(*, key: str, window_s: float, action: str, actor: str = "system", obj: Any = None,
                    study_id: int | None = None, consortium_id: int | None = None, hospital_id: int | None = None,
                    data: dict | None = None) -> AuditEvent | None:
    """Record one occurrence of a repeatable event (arguments as audit_record's, plus its key and
    window). Returns the event written for it, or None when it was counted into the open window."""
    now = timezone.now()
    fields = {"action": action, "actor": actor[:200],
              "object_type": type(obj).__name__.lower() if obj is not None else "",
              "object_id": str(obj.pk) if obj is not None else "",
              "study_id": study_id, "consortium_id": consortium_id, "hospital_id": hospital_id, "data": data or {}}
    canonical_data(fields["data"])  # NaN and the like are refused now, not when the summary is written
    with transaction.atomic():
        flush_due(now=now)
        tally = _locked_tally(key[:300])
        if tally.window_end is not None and tally.window_end > now:
            _count(tally, fields, now)
            return None
        if tally.count:  # a window that closed with repeats nobody flushed yet: its summary comes first
            _write_summary(tally)
        ev = append_event(**fields)
        tally.window_end, tally.count, tally.first_at, tally.last_at = now + timedelta(seconds=window_s), 0, None, None
        tally.pending = ""
        tally.save()
        return ev


def flush_summary(key: str) -> AuditEvent | None:
    """Write the summary of key's counted occurrences now (its window stays open)."""
    with transaction.atomic():
        tally = AuditTally.objects.select_for_update().filter(key=key[:300]).first()
        if tally is None or not tally.count:
            return None
        return _write_summary(tally)


def flush_due(*, now=None, limit: int = 100) -> int:
    """Write the summaries of windows that have closed; returns how many were written."""
    now = now or timezone.now()
    written = 0
    with transaction.atomic():
        due = (AuditTally.objects.select_for_update(skip_locked=True)
               .filter(window_end__lte=now, count__gt=0).order_by("window_end")[:limit])
        for tally in due:
            _write_summary(tally)
            tally.window_end = None
            tally.save(update_fields=["window_end"])
            written += 1
    return written


def _locked_tally(key: str) -> AuditTally:
    # Insert-if-missing then lock: concurrent first occurrences of a key wait for each other here.
    AuditTally.objects.bulk_create([AuditTally(key=key)], ignore_conflicts=True)
    return AuditTally.objects.select_for_update().get(key=key)


def _count(tally: AuditTally, fields: dict, now) -> None:
    pending = json.loads(tally.pending) if tally.pending else {"distinct": {}}
    for name, value in fields["data"].items():
        if not isinstance(value, _SCALARS):
            continue
        seen = pending["distinct"].setdefault(name, [])
        if len(seen) < MAX_DISTINCT and canonical_data(value) not in {canonical_data(v) for v in seen}:
            seen.append(value)
    tally.count += 1
    tally.first_at = tally.first_at or now
    tally.last_at = now
    tally.pending = canonical_data({**pending, "event": fields})
    tally.save()


def _write_summary(tally: AuditTally) -> AuditEvent:
    pending = json.loads(tally.pending)
    fields = pending["event"]
    data = {**fields.pop("data"), "count": tally.count, "first_at": tally.first_at.isoformat(timespec="microseconds"),
            "last_at": tally.last_at.isoformat(timespec="microseconds")}
    distinct = {name: values for name, values in pending["distinct"].items() if len(values) > 1}
    if distinct:
        data["distinct"] = distinct
    ev = append_event(**fields, data=data)
    tally.count, tally.first_at, tally.last_at, tally.pending = 0, None, None, ""
    tally.save(update_fields=["count", "first_at", "last_at", "pending"])
    return ev
