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


# ---------------------------------------------------------------- what the study report and the portal read

# Audit actions that record a refusal, a rejection or a failure (shown in the report's own section).
PROBLEM_ACTIONS = ("job.refused", "update.rejected", "round.failed", "study.failed", "he_context.rejected",
                   "model.attestation_mismatch", "model.release_refused", "key.rejected")


def attestations(study) -> list[dict]:
    """Which hospitals attested which global-model hash, per completed round.

    [{"round": n, "attempt": a, "hashes": {sha256: [hospital names]}, "mismatch": bool,
      "not_attested": [approved hospitals that have not reported]}], in round order.
    """
    from studies.models import Participation, Round, RoundReport

    approved = dict(Participation.objects.filter(study=study, state=Participation.State.APPROVED)
                    .values_list("hospital_id", "hospital__name"))
    out = []
    for rnd in Round.objects.filter(study=study, status=Round.Status.DONE).order_by("number", "attempt"):
        hashes: dict[str, list[str]] = {}
        seen = set()
        for rep in RoundReport.objects.filter(round=rnd).select_related("hospital").order_by("hospital__name"):
            hashes.setdefault(rep.model_sha256, []).append(rep.hospital.name)
            seen.add(rep.hospital_id)
        out.append({"round": rnd.number, "attempt": rnd.attempt, "hashes": hashes, "mismatch": len(hashes) > 1,
                    "not_attested": sorted(name for hid, name in approved.items() if hid not in seen)})
    return out


def attestation_mismatches(study) -> list[dict]:
    return [a for a in attestations(study) if a["mismatch"]]


def round_participation(study) -> list[dict]:
    """Per round attempt: status, and for each invited hospital what happened to its job."""
    from studies.models import Aggregate, Round, TrainingJob

    rows = []
    for rnd in Round.objects.filter(study=study).order_by("number", "attempt"):
        jobs = list(TrainingJob.objects.filter(round=rnd).select_related("hospital").order_by("hospital__name"))
        agg = Aggregate.objects.filter(round=rnd).first()
        rows.append({
            "round": rnd.number, "attempt": rnd.attempt, "status": rnd.status, "reason": rnd.status_reason,
            "opened_at": rnd.opened_at, "done_at": rnd.done_at,
            "jobs": [{"hospital": j.hospital.name, "status": j.status, "code": j.reason_code, "reason": j.reason}
                     for j in jobs],
            "uploaded": sum(j.status == TrainingJob.Status.UPLOADED for j in jobs),
            "contributors": agg.n_contributors if agg else 0,
            "aggregate_sha256": agg.sha256 if agg else "",
        })
    return rows


def privacy_spends(study) -> dict:
    """Reported privacy spend per hospital, each job with the accountant's inputs, in round order.

    {hospital name: {"hospital_id", "max_epsilon", "spends": [PrivacySpend...], "epsilon": last cumulative}}
    """
    from studies.models import Participation, PrivacySpend

    out: dict[str, dict] = {}
    for p in (Participation.objects.filter(study=study, state=Participation.State.APPROVED)
              .select_related("hospital").order_by("hospital__name")):
        out[p.hospital.name] = {"hospital_id": p.hospital_id, "max_epsilon": p.hospital.max_epsilon,
                                "spends": [], "epsilon": 0.0}
    for ps in (PrivacySpend.objects.filter(job__round__study=study)
               .select_related("job__hospital", "job__round")
               .order_by("job__hospital__name", "job__round__number", "job__round__attempt", "job_id")):
        row = out.setdefault(ps.job.hospital.name, {"hospital_id": ps.job.hospital_id,
                                                     "max_epsilon": ps.job.hospital.max_epsilon,
                                                     "spends": [], "epsilon": 0.0})
        row["spends"].append(ps)
        row["epsilon"] = ps.epsilon
    return out


def problem_events(study_id: int):
    """Refusals, rejections and failures of a study, plus privacy recomputations that found a mismatch."""
    from django.db.models import Q

    return study_events(study_id).filter(Q(action__in=PROBLEM_ACTIONS) | Q(action="privacy.recompute", data__ok=False))


def trail_for(user, *, study_id: int | None = None, consortium_id: int | None = None):
    """Audit events the user may read: those of the consortia where the user audits (auditor or admin).
    None when a given study/consortium is not auditable by the user (the view answers 404)."""
    from consortia.models import Membership
    from consortia.selectors import AUDIT_ROLES

    if user.is_superuser:
        allowed = None
    else:
        allowed = set(Membership.objects.filter(user=user, role__in=list(AUDIT_ROLES))
                      .values_list("consortium_id", flat=True))
    qs = AuditEvent.objects.all()
    if study_id is not None:
        from studies.models import Study

        study = Study.objects.filter(pk=study_id).first()
        if study is None or (allowed is not None and study.consortium_id not in allowed):
            return None
        return qs.filter(stream=stream_for(study_id)).order_by("seq")
    if consortium_id is not None:
        if allowed is not None and consortium_id not in allowed:
            return None
        return qs.filter(consortium_id=consortium_id).order_by("-created_at", "-id")
    if allowed is not None:
        qs = qs.filter(consortium_id__in=allowed)
    return qs.order_by("-created_at", "-id")
