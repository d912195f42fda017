"""Deadlines do not run while the platform itself is down.

Every reconciler run (Celery beat, every FEDPLATFORM_RECONCILE_S) beats PlatformHeartbeat. A gap
much longer than that interval means the platform could not work (its database unreachable, or
no worker), so nodes could not deliver either: the first beat after the gap extends the deadline
of every collecting round by the gap, with an audit event per round. Until that beat has run, a
round is not closed for its deadline, nor for a node that looks offline (every node looks offline
right after the platform itself was away). Recruitment deadlines move on the same way."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..models import PlatformHeartbeat, Round, Study
from .common import _study_audit


def platform_gap_s() -> float:
    """A gap between two reconciler runs longer than this counts as the platform being away: five
    intervals (a busy worker may delay a run or two), and at least 10 s. Short on purpose: an
    outage shorter than the threshold could still expire a deadline that falls inside it, while a
    busy spell mistaken for an outage only gives the open rounds a few seconds more."""
    interval = float(settings.CELERY_BEAT_SCHEDULE["reconcile-studies"]["schedule"])
    return max(10.0, 5 * interval)


def platform_away(now: datetime) -> bool:
    """The platform has been away (no reconciler run for platform_gap_s()) and has not caught up yet."""
    beat = PlatformHeartbeat.objects.filter(pk=1).values_list("beat_at", flat=True).first()
    return beat is not None and (now - beat).total_seconds() > platform_gap_s()


def platform_resumed_within(now: datetime, seconds: float) -> bool:
    """The platform came back from an absence less than ``seconds`` ago."""
    resumed = PlatformHeartbeat.objects.filter(pk=1).values_list("resumed_at", flat=True).first()
    return resumed is not None and (now - resumed).total_seconds() < seconds


def platform_beat() -> float:
    """Record a reconciler run; after a gap, extend every collecting round's deadline by it.
    Returns the gap in seconds that deadlines were extended by (0.0 if none)."""
    now = timezone.now()
    with transaction.atomic():
        hb, created = PlatformHeartbeat.objects.select_for_update().get_or_create(pk=1, defaults={"beat_at": now})
        gap = 0.0 if created else (now - hb.beat_at).total_seconds()
        if gap <= platform_gap_s():
            hb.beat_at = now
            hb.save(update_fields=["beat_at"])
            return 0.0
        by = timedelta(seconds=gap)
        rounds = list(Round.objects.select_for_update().filter(status=Round.Status.COLLECTING, deadline__isnull=False)
                      .select_related("study"))
        Round.objects.filter(pk__in=[r.pk for r in rounds]).update(deadline=F("deadline") + by)
        for rnd in rounds:
            _study_audit(rnd.study, "round.deadline_extended", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "by_s": round(gap, 1),
                               "deadline": (rnd.deadline + by).isoformat(),
                               "reason": "the platform was away (no reconciler run, e.g. its database was "
                                         f"unreachable) from {hb.beat_at.isoformat()} to {now.isoformat()}"})
        studies = list(Study.objects.select_for_update().filter(status=Study.Status.RECRUITING,
                                                                recruitment_deadline__isnull=False))
        Study.objects.filter(pk__in=[s.pk for s in studies]).update(recruitment_deadline=F("recruitment_deadline") + by)
        for study in studies:
            _study_audit(study, "study.recruitment_deadline_extended", "system",
                         data={"by_s": round(gap, 1), "deadline": (study.recruitment_deadline + by).isoformat(),
                               "reason": "the platform was away (no reconciler run) from "
                                         f"{hb.beat_at.isoformat()} to {now.isoformat()}"})
        hb.beat_at, hb.resumed_at = now, now
        hb.save(update_fields=["beat_at", "resumed_at"])
    return gap
