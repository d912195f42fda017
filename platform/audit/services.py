"""Writing audit events. Call audit_record inside the transaction of the state change it records."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from .chain import GENESIS, AuditDataError, canonical_data, event_hash, jsonb_copy
from .models import AuditEvent, AuditHead

PLATFORM_STREAM = "platform"
__all__ = ["AuditDataError", "PLATFORM_STREAM", "actor_label", "append_event", "audit_record", "stream_for"]


def stream_for(study_id: int | None) -> str:
    return f"study:{study_id}" if study_id else PLATFORM_STREAM


def actor_label(*, user=None, hospital=None) -> str:
    if hospital is not None:
        return f"node:{hospital.pk}:{hospital.name}"
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.pk}:{user.get_username()}"
    return "system"


def audit_record(*, action: str, actor: str = "system", obj: Any = None, study_id: int | None = None,
                 consortium_id: int | None = None, hospital_id: int | None = None,
                 data: dict | None = None) -> AuditEvent:
    """Append one event to its stream's hash chain. Must run inside transaction.atomic().

    Raises AuditDataError (a ValueError) when data holds a value JSON cannot carry (NaN, Infinity):
    validate such input at the edge; the trail records exactly what it is given or nothing."""
    return append_event(action=action, actor=actor,
                        object_type=type(obj).__name__.lower() if obj is not None else "",
                        object_id=str(obj.pk) if obj is not None else "",
                        study_id=study_id, consortium_id=consortium_id, hospital_id=hospital_id, data=data)


def append_event(*, action: str, actor: str, object_type: str = "", object_id: str = "", study_id: int | None = None,
                 consortium_id: int | None = None, hospital_id: int | None = None,
                 data: dict | None = None) -> AuditEvent:
    """audit_record with the object named by type and id (summaries are written without the object)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must be called inside the state change's transaction")
    # The hashed record of the data is its canonical text, stored as is (chain.py says why).
    data_text = canonical_data(data or {})
    stream = stream_for(study_id)
    AuditHead.objects.get_or_create(stream=stream, defaults={"seq": 0, "hash": GENESIS})
    head = AuditHead.objects.select_for_update().get(stream=stream)
    fields = {
        "stream": stream,
        "seq": head.seq + 1,
        "created_at": timezone.now().isoformat(timespec="microseconds"),
        "actor": actor[:200],
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "consortium_id": consortium_id,
        "study_id": study_id,
        "hospital_id": hospital_id,
        "data_canonical": data_text,
        "prev_hash": head.hash,
    }
    h = event_hash(fields)
    ev = AuditEvent.objects.create(**{**fields, "created_at": datetime.fromisoformat(fields["created_at"]),
                                      "data": jsonb_copy(json.loads(data_text)), "hash": h})
    AuditHead.objects.filter(stream=stream).update(seq=fields["seq"], hash=h)
    return ev
