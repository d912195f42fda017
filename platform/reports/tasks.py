"""Work of the reports app run by Celery: keep each study's privacy recomputation up to date."""

from __future__ import annotations

from celery import shared_task

from studies.models import Study

from . import privacy_cache


@shared_task(name="reports.recompute_privacy", soft_time_limit=600, time_limit=660)
def recompute_privacy(study_id: int) -> bool:
    """Enqueued by the studies services after a privacy spend is recorded and when a study ends.
    Idempotent; False when the study no longer exists."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return False
    privacy_cache.refresh(study)
    return True
