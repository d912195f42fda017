"""What the study audit report and the trail pages read: the study's rounds, attestations, privacy
spends and problems (from the studies tables and the study's audit chain)."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from audit.models import AuditEvent
from audit.selectors import study_events
from audit.services import stream_for
from studies.access import TrailScope
from studies.models import Aggregate, Participation, PrivacySpend, Round, RoundReport, TrainingJob

# Audit actions that record a refusal, a rejection or a failure (shown in the report's own section).
PROBLEM_ACTIONS = ("job.refused", "update.rejected", "round.failed", "study.failed", "he_context.rejected",
                   "model.attestation_mismatch", "model.release_refused", "key.rejected")


def attestations(study) -> list[dict]:
    """Which hospitals attested which global-model hash, per completed round.

    [{"round": n, "attempt": a, "hashes": {sha256: [hospital names]}, "mismatch": bool,
      "not_attested": [approved hospitals that have not reported]}], in round order.
    """
    approved = dict(Participation.objects.filter(study=study, state=Participation.State.APPROVED)
                    .values_list("hospital_id", "hospital__name"))
    # Reports superseded by a re-run of the evaluation (a resolved blocked release) are on record in
    # the trail (model.evaluation_rerun); the current ones attest the round. One query for all rounds.
    by_round: dict[int, list] = {}
    for rep in (RoundReport.objects.filter(round__study=study, round__status=Round.Status.DONE,
                                           superseded_at__isnull=True)
                .values_list("round_id", "model_sha256", "hospital_id", "hospital__name").order_by("hospital__name")):
        by_round.setdefault(rep[0], []).append(rep[1:])
    out = []
    for rnd in Round.objects.filter(study=study, status=Round.Status.DONE).order_by("number", "attempt"):
        hashes: dict[str, list[str]] = {}
        seen = set()
        for sha, hid, name in by_round.get(rnd.pk, []):
            hashes.setdefault(sha, []).append(name)
            seen.add(hid)
        out.append({"round": rnd.number, "attempt": rnd.attempt, "hashes": hashes, "mismatch": len(hashes) > 1,
                    "not_attested": sorted(name for hid, name in approved.items() if hid not in seen)})
    return out


def round_participation(study) -> list[dict]:
    """Per round attempt: status, and for each invited hospital what happened to its job."""
    jobs_of: dict[int, list] = {}
    for j in TrainingJob.objects.filter(round__study=study).select_related("hospital").order_by("hospital__name"):
        jobs_of.setdefault(j.round_id, []).append(j)
    aggs = {a.round_id: a for a in Aggregate.objects.filter(round__study=study).only(
        "round_id", "n_contributors", "sha256")}
    rows = []
    for rnd in Round.objects.filter(study=study).order_by("number", "attempt"):
        jobs = jobs_of.get(rnd.pk, [])
        agg = aggs.get(rnd.pk)
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


def problem_events(study_id: int) -> QuerySet[AuditEvent]:
    """Refusals, rejections and failures of a study, plus privacy recomputations that found a mismatch."""
    return study_events(study_id).filter(Q(action__in=PROBLEM_ACTIONS) | Q(action="privacy.recompute", data__ok=False))


def trail_events(scope: TrailScope) -> QuerySet[AuditEvent]:
    """The events of a trail page (scope from studies.access.trail_scope): one study's chain in
    order, or a consortium's / every audited consortium's events, newest first."""
    qs = AuditEvent.objects.all()
    if scope.study is not None:
        return qs.filter(stream=stream_for(scope.study.pk)).order_by("seq")
    if scope.consortium_id is not None:
        return qs.filter(consortium_id=scope.consortium_id).order_by("-created_at", "-id")
    if scope.consortium_ids is not None:
        qs = qs.filter(consortium_id__in=scope.consortium_ids)
    return qs.order_by("-created_at", "-id")


def trail_filter(qs: QuerySet[AuditEvent], *, action: str = "", hospital_id: int | None = None,
                 since=None, until=None) -> QuerySet[AuditEvent]:
    """A trail page's filters: event type (``study.edited``, or a family ending in a dot:
    ``study.``), hospital, and a time range (``since`` inclusive, ``until`` exclusive)."""
    if action:
        qs = qs.filter(action__startswith=action) if action.endswith(".") else qs.filter(action=action)
    if hospital_id is not None:
        qs = qs.filter(hospital_id=hospital_id)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if until is not None:
        qs = qs.filter(created_at__lt=until)
    return qs
