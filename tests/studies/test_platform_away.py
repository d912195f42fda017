"""Deadlines do not expire while the platform itself is down (e.g. PostgreSQL unreachable for
longer than a round deadline): the first reconciler run after the gap extends them by it, and no
round is closed for its deadline (or for nodes that look offline) before that."""

from __future__ import annotations

from datetime import timedelta

import pytest
from audit_support import enrolled, make_study, mark_uploaded_with_spend, postgres  # noqa: F401 - fixture
from django.utils import timezone

from audit.models import AuditEvent
from consortia.models import Hospital
from consortia.services import consortium_create
from studies import services
from studies.models import PlatformHeartbeat, Round, TrainingJob


@pytest.fixture
def late_round(postgres):  # noqa: F811
    """A round whose deadline passed 10 s ago, with one update in (quorum 1) and one job still out."""
    c = consortium_create(name="Away consortium")
    a, b = enrolled(c, "Hospital A"), enrolled(c, "Hospital B")
    study = make_study(c, [a, b], quorum=1)
    now = timezone.now()
    rnd = Round.objects.create(study=study, number=1, status=Round.Status.COLLECTING,
                               collecting_at=now - timedelta(seconds=700), deadline=now - timedelta(seconds=10))
    mark_uploaded_with_spend(TrainingJob.objects.create(round=rnd, hospital=a))
    TrainingJob.objects.create(round=rnd, hospital=b)
    return rnd, (a, b)


def _last_beat(seconds_ago):
    PlatformHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": timezone.now() - timedelta(seconds=seconds_ago)})


def test_a_deadline_that_passed_while_the_platform_was_away_is_extended(late_round):
    rnd, _ = late_round
    _last_beat(600)  # the reconciler last ran 10 minutes ago: the platform was down
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.COLLECTING

    gap = services.platform_beat()
    assert 599 < gap < 700
    rnd2 = Round.objects.get(pk=rnd.pk)
    assert rnd2.deadline - rnd.deadline == timedelta(seconds=gap)
    event = AuditEvent.objects.get(action="round.deadline_extended", study_id=rnd.study_id)
    assert event.data["round"] == 1 and event.data["by_s"] == round(gap, 1) and "away" in event.data["reason"]
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.COLLECTING
    assert services.platform_beat() == 0.0  # the next run: no gap, nothing extended again


def test_the_nodes_are_not_judged_offline_right_after_the_platform_was_away(late_round, settings):
    rnd, (_, b) = late_round
    Round.objects.filter(pk=rnd.pk).update(deadline=timezone.now() + timedelta(hours=1))
    Hospital.objects.filter(pk=b.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=650))
    _last_beat(600)
    services.platform_beat()
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.COLLECTING


def test_with_the_platform_up_a_passed_deadline_closes_the_round(late_round):
    rnd, _ = late_round
    _last_beat(3)
    assert services.platform_beat() == 0.0
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.AGGREGATING
    assert not AuditEvent.objects.filter(action="round.deadline_extended").exists()


def test_a_gap_of_a_few_reconciler_intervals_counts_as_away(late_round, settings):
    """With the reconciler every second, a 20 s database outage (shorter than a minute) is a gap."""
    rnd, _ = late_round
    settings.CELERY_BEAT_SCHEDULE = {**settings.CELERY_BEAT_SCHEDULE,
                                     "reconcile-studies": {**settings.CELERY_BEAT_SCHEDULE["reconcile-studies"],
                                                           "schedule": 1.0}}
    _last_beat(20)
    services.round_try_close(round_id=rnd.pk)
    assert Round.objects.get(pk=rnd.pk).status == Round.Status.COLLECTING
    assert 19 < services.platform_beat() < 60
    _last_beat(4)  # a busy worker's late run is not an outage
    assert services.platform_beat() == 0.0
