"""Celery tasks. They take ids, are idempotent (services claim state with conditional updates and
unique constraints) and are enqueued on commit by the services, by name (services/common.py holds
the names; the studies app imports this module at start-up so every process has them registered)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from . import services
from .models import Round, Study
from .services.common import ADVANCE_STUDY, AGGREGATE_CHUNK, AGGREGATE_ROUND, CLOSE_ROUND, CLOSE_ROUND_AT_DEADLINE

log = logging.getLogger(__name__)


@shared_task(name=ADVANCE_STUDY, soft_time_limit=120, time_limit=180)
def advance_study(study_id: int) -> None:
    services.study_advance(study_id=study_id)


@shared_task(name=CLOSE_ROUND, soft_time_limit=60, time_limit=120)
def close_round(round_id: int) -> None:
    if services.round_try_close(round_id=round_id, inline_aggregate=True):
        services.round_aggregate(round_id=round_id)  # small: no second broker hop


# A long deadline is waited for in hops of at most this long: a message with an ETA sits unacknowledged
# in a worker, and must never outlive the broker's visibility timeout (Redis: 1 h), after which Redis
# would hand it to a second worker. The reconciler closes a round past its deadline anyway.
DEADLINE_HOP_MAX_S = 300


@shared_task(name=CLOSE_ROUND_AT_DEADLINE, soft_time_limit=60, time_limit=120)
def close_round_at_deadline(round_id: int) -> None:
    """Scheduled with a countdown when the round opens; the reconciler covers a lost message."""
    rnd = Round.objects.filter(pk=round_id).only("deadline", "status").first()
    if rnd is None or rnd.status != Round.Status.COLLECTING:
        return
    remaining = (rnd.deadline - timezone.now()).total_seconds() if rnd.deadline else 0
    if remaining > 0:
        if close_round_at_deadline.app.conf.task_always_eager:
            return  # eager mode (tests without a worker): the reconciler or a later call closes it
        close_round_at_deadline.apply_async((round_id,), countdown=min(remaining + 0.5, DEADLINE_HOP_MAX_S))
        return
    services.round_try_close(round_id=round_id)


@shared_task(name=AGGREGATE_CHUNK, acks_late=True, soft_time_limit=3000, time_limit=3600)
def aggregate_chunk(round_id: int, index: int) -> None:
    """One range of ciphertext parts of a large model; chunks of a round run on any free worker."""
    services.round_aggregate_chunk(round_id=round_id, index=index)


@shared_task(name=AGGREGATE_ROUND, acks_late=True, soft_time_limit=3000, time_limit=3600)
def aggregate_round(round_id: int) -> None:
    services.round_aggregate(round_id=round_id)


@shared_task(name="studies.reconcile", soft_time_limit=240, time_limit=300)
def reconcile() -> dict:
    """Repair any study whose next step was lost (a dropped message, a worker killed mid-task)."""
    fixed = {"advanced": 0, "closed": 0, "aggregated": 0, "unmask_failed": 0}
    # First: after a gap (the platform was down) the collecting rounds' deadlines are extended by it.
    gap = services.platform_beat()
    if gap:
        log.warning("reconcile: the platform was away for %.0f s; collecting rounds' deadlines extended by that", gap)
    for sid in Study.objects.filter(status__in=[Study.Status.RECRUITING, Study.Status.RUNNING]).values_list("pk", flat=True):
        try:
            services.study_advance(study_id=sid)
            fixed["advanced"] += 1
        except Exception:  # one bad study must not stop the repair of the others
            log.exception("reconcile: advancing study %s failed", sid)
    for rid in Round.objects.filter(status=Round.Status.COLLECTING).values_list("pk", flat=True):
        try:
            services.round_try_close(round_id=rid)
            fixed["closed"] += 1
        except Exception:
            log.exception("reconcile: closing round %s failed", rid)
    # A distributed round whose survivors did not unmask it within the stage time: fail the attempt.
    for rid in Round.objects.filter(status=Round.Status.AGGREGATING, secagg__u2_at__isnull=False,
                                    secagg__unmasked_at__isnull=True).values_list("pk", flat=True):
        try:
            if services.unmask_fail_stalled(round_id=rid):
                log.warning("reconcile: round %s failed: its unmask stage stalled", rid)
                fixed["unmask_failed"] += 1
        except Exception:
            log.exception("reconcile: failing the stalled unmask stage of round %s failed", rid)
    # An aggregation still running is not stuck: repair only those closed longer ago than the grace
    # (settings.AGGREGATION_GRACE_S). Repairing one that is in fact still running only repeats work:
    # the aggregate is stored by a conditional update, chunks by content.
    now = timezone.now()
    stuck_before = now - timedelta(seconds=settings.AGGREGATION_GRACE_S)
    for rid, closed_at in Round.objects.filter(status=Round.Status.AGGREGATING, aggregate__isnull=True,
                                               closed_at__lt=stuck_before).values_list("pk", "closed_at"):
        try:
            missing = services.missing_chunks(round_id=rid)
            log.warning("reconcile: round %s has been aggregating for %.0f s (a worker lost mid-aggregation?): "
                        "%s", rid, (now - closed_at).total_seconds(),
                        f"re-sending chunk(s) {missing}" if missing else "aggregating it again")
            if missing:
                for index in missing:
                    aggregate_chunk.delay(rid, index)
            else:
                services.round_aggregate(round_id=rid)
            fixed["aggregated"] += 1
        except Exception:
            log.exception("reconcile: aggregating round %s failed", rid)
    return fixed
