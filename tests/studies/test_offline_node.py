"""A node gone for good is not waited for: once the quorum is in and every job still out belongs to
a node with no contact within settings.NODE_ONLINE_WINDOW_S (and none since the round opened), the
round closes without waiting for its deadline, and says why."""

from __future__ import annotations

from datetime import timedelta

import pytest
from audit_support import enrolled, make_study, mark_uploaded_with_spend, postgres  # noqa: F401 - fixture
from django.utils import timezone

from audit.models import AuditEvent
from consortia.models import Hospital
from consortia.services import consortium_create
from studies import services
from studies.models import Round, TrainingJob


@pytest.fixture
def collecting(postgres):  # noqa: F811
    c = consortium_create(name="Offline consortium")
    a, b, gone = (enrolled(c, n) for n in ("Hospital A", "Hospital B", "Hospital Gone"))
    study = make_study(c, [a, b, gone], quorum=2)
    now = timezone.now()
    rnd = Round.objects.create(study=study, number=1, status=Round.Status.COLLECTING,
                               collecting_at=now - timedelta(seconds=200), deadline=now + timedelta(hours=1))
    jobs = {h.name: TrainingJob.objects.create(round=rnd, hospital=h) for h in (a, b, gone)}
    return rnd, jobs, (a, b, gone)


def _answer(job):
    mark_uploaded_with_spend(job)


def _last_seen(hospital, seconds_ago):
    Hospital.objects.filter(pk=hospital.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=seconds_ago))


def test_the_round_closes_early_when_only_offline_nodes_are_missing(collecting, settings):
    rnd, jobs, (a, b, gone) = collecting
    settings.NODE_ONLINE_WINDOW_S = 90
    _last_seen(gone, 600)
    _answer(jobs["Hospital A"])
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.COLLECTING  # the quorum (2) is not in yet
    _answer(jobs["Hospital B"])
    services.round_try_close(round_id=rnd.pk)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.AGGREGATING
    job = TrainingJob.objects.get(pk=jobs["Hospital Gone"].pk)
    assert job.status == TrainingJob.Status.EXPIRED and "offline" in job.reason
    closed = AuditEvent.objects.get(action="round.closed", study_id=rnd.study_id)
    assert closed.data["offline"] == [gone.pk] and "offline" in closed.data["closed_early"]


def test_a_node_never_seen_is_not_waited_for(collecting):
    rnd, jobs, (_, _, gone) = collecting
    Hospital.objects.filter(pk=gone.pk).update(last_heartbeat=None)
    _answer(jobs["Hospital A"])
    _answer(jobs["Hospital B"])
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.AGGREGATING


@pytest.mark.parametrize("seconds_ago", [30, 150])  # online; or quiet for 150 s but seen since the round opened
def test_a_node_online_or_busy_training_is_waited_for(collecting, settings, seconds_ago):
    rnd, jobs, (_, _, gone) = collecting
    settings.NODE_ONLINE_WINDOW_S = 90
    _last_seen(gone, seconds_ago)
    _answer(jobs["Hospital A"])
    _answer(jobs["Hospital B"])
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.COLLECTING
    assert TrainingJob.objects.get(pk=jobs["Hospital Gone"].pk).status == TrainingJob.Status.DISPATCHED


def test_a_node_that_received_its_job_is_waited_for_even_when_quiet(collecting, settings):
    """Its last contact is older than the window and than the round (it fetched the job in a long
    poll that started before the round opened), but the platform delivered the job to it."""
    rnd, jobs, (_, _, gone) = collecting
    settings.NODE_ONLINE_WINDOW_S = 90
    _last_seen(gone, 600)
    TrainingJob.objects.filter(pk=jobs["Hospital Gone"].pk).update(claimed_at=timezone.now())
    _answer(jobs["Hospital A"])
    _answer(jobs["Hospital B"])
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.COLLECTING
