"""Recruitment ends: whom a recruiting study waits for, and what happens at its deadline.

A study opens recruitment with a deadline (Study.recruitment_window_s after it opens). Until then
it starts as soon as every invited hospital has answered and every approving one holds the study
key. At the deadline it does not wait any longer:

- if the encryption context is published and at least the quorum of approving hospitals hold the
  key, it starts with them; every other hospital is withdrawn from it with the reason (no answer,
  or no key in time), so no round ever waits for it;
- otherwise it fails, and its reason names whom it waited for and for what.

The deadline does not run while the platform itself is away (its database unreachable, no worker):
the first reconciler run after such a gap moves every recruiting study's deadline on by the gap
(platform_clock.platform_beat), and until then nothing is closed for its deadline.
"""

from __future__ import annotations

from datetime import datetime

from ..models import Participation, Study
from ..selectors import recruitment_waiting
from .common import _study_audit
from .platform_clock import platform_away


def recruitment_due(study: Study, now: datetime) -> bool:
    """The recruitment deadline has passed, and the platform was not away meanwhile (its reconciler
    moves the deadline on by such a gap before anything is closed for it)."""
    return (study.recruitment_deadline is not None and now >= study.recruitment_deadline
            and not platform_away(now))


def recruitment_close(study: Study, parts: list[Participation], has_context: bool, now: datetime) -> tuple[bool, str]:
    """Close recruitment at its deadline, inside the caller's transaction (participations locked).
    Returns (start, reason): start True once those not ready are withdrawn, False if the study must
    fail, the reason naming whom it waited for."""
    holders = [p for p in parts if p.state == Participation.State.APPROVED and p.key_acked_at is not None]
    waiting = recruitment_waiting(study, parts, has_context)
    closed = f"recruitment closed at its deadline ({study.recruitment_deadline.isoformat()})"
    if not has_context or len(holders) < study.quorum:
        why = "; ".join(w["detail"] for w in waiting) or "no hospital approved"
        need = ("the encryption context was never published" if not has_context
                else f"{len(holders)} hospital(s) hold the study key and the quorum is {study.quorum}")
        return False, f"{closed}: {need}. Waiting for: {why}"
    by_id = {p.hospital_id: p for p in parts}
    for w in waiting:
        p = by_id[w["hospital_id"]]
        was = p.state
        reason = ("did not answer the invitation before the recruitment deadline" if was == Participation.State.INVITED
                  else "did not take the study key before the recruitment deadline")
        p.state, p.reason, p.decided_by, p.decided_at = Participation.State.WITHDRAWN, reason, "system", now
        p.save(update_fields=["state", "reason", "decided_by", "decided_at"])
        _study_audit(study, "participation.withdrawn", "system", obj=p, hospital_id=p.hospital_id,
                     data={"hospital": p.hospital.name, "reason": reason, "was": was, "expired_jobs": 0,
                           "holds_study_key": False, "custodian": False, "recruitment_deadline": True})
    names = ", ".join(sorted(p.hospital.name for p in holders))
    left = f"; withdrawn: {', '.join(w['hospital'] for w in waiting)}" if waiting else ""
    return True, f"{closed}: {len(holders)} hospitals hold the key ({names}){left}"
