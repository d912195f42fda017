"""Periodic work of the audit trail (run by Celery beat, see CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from .repeated import flush_due


@shared_task(name="audit.flush_summaries")
def flush_summaries() -> int:
    """Write the summary events of repeat windows that have closed (failed logins, refused enrolments)."""
    return flush_due()
