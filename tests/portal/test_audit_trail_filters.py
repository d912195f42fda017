"""The audit trail's filters (event type, study, hospital, time range) and the event detail page,
through the access policy (another consortium's event or hospital: 404; no audit role: 403)."""

from __future__ import annotations

import datetime
import re

import pytest
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_record
from studies import services

pytestmark = pytest.mark.django_db


def _count(html: str) -> int:
    return int(re.search(r"\((\d+) events\)", html).group(1))


@pytest.fixture
def trail_world(world):
    services.participation_decide(participation=world.p1, decision="approve", actor="user:1:hadmin1", reason="ok")
    services.participation_decide(participation=world.both.participations.get(hospital=world.h2), decision="decline",
                                  actor="user:2:hadmin2", reason="no capacity")
    with transaction.atomic():
        audit_record(action="platform.test_event", actor="system", data={"x": 1})   # no consortium
    return world


def test_trail_filters_by_event_type_family_and_hospital(trail_world, client):
    w = trail_world
    client.force_login(w.users["auditor"])
    c1 = AuditEvent.objects.filter(consortium_id=w.c1.pk)
    html = client.get("/audit/trail/?action=study.recruiting").content.decode()
    assert _count(html) == c1.filter(action="study.recruiting").count() == 3
    assert '<option value="study.recruiting" selected>' in html
    assert _count(client.get("/audit/trail/?action=participation.").content.decode()) == \
        c1.filter(action__startswith="participation.").count() >= 2
    html = client.get(f"/audit/trail/?hospital={w.h1.pk}").content.decode()
    assert _count(html) == c1.filter(hospital_id=w.h1.pk).count() >= 1
    row = '<td class="mono">{}</td>'
    assert row.format("participation.approved") in html and row.format("participation.declined") not in html
    html = client.get(f"/audit/trail/?study={w.both.pk}&hospital={w.h2.pk}").content.decode()
    assert _count(html) == 1 and "participation.declined" in html


def test_trail_filters_by_time_range_and_says_what_is_wrong_with_a_bad_date(trail_world, client):
    w = trail_world
    client.force_login(w.users["cadmin"])
    today = timezone.now().date()
    total = AuditEvent.objects.filter(consortium_id=w.c1.pk).count()
    assert _count(client.get(f"/audit/trail/?consortium={w.c1.pk}&since={today}&until={today}").content.decode()) == total
    tomorrow, yesterday = today + datetime.timedelta(days=1), today - datetime.timedelta(days=1)
    assert _count(client.get(f"/audit/trail/?since={tomorrow}").content.decode()) == 0
    assert _count(client.get(f"/audit/trail/?until={yesterday}").content.decode()) == 0
    now = timezone.now().astimezone(datetime.timezone.utc) + datetime.timedelta(minutes=1)
    assert _count(client.get(f"/audit/trail/?until={now:%Y-%m-%dT%H:%M}").content.decode()) == total
    for bad in ("2026-13-40", "yesterday", "2026-02-30T10:00"):
        r = client.get(f"/audit/trail/?since={bad}")
        assert r.status_code == 400 and "is not a date" in r.content.decode(), bad


def test_trail_hospital_filter_of_another_consortium_is_404(trail_world, client):
    w = trail_world
    client.force_login(w.users["auditor"])
    assert client.get(f"/audit/trail/?hospital={w.h3.pk}").status_code == 404
    assert client.get("/audit/trail/?hospital=abc").status_code == 404
    client.force_login(w.users["hadmin3"])
    assert client.get(f"/audit/trail/?consortium={w.c1.pk}&hospital={w.h1.pk}").status_code == 404


def test_event_detail_shows_the_whole_event_and_its_link(trail_world, client):
    w = trail_world
    ev = AuditEvent.objects.get(study_id=w.both.pk, action="participation.declined")
    client.force_login(w.users["auditor"])
    trail = client.get(f"/audit/trail/?study={w.both.pk}").content.decode()
    assert f'href="/audit/events/{ev.pk}/"' in trail
    r = client.get(f"/audit/events/{ev.pk}/")
    html = r.content.decode()
    assert r.status_code == 200 and ev.hash in html and ev.prev_hash in html and "no capacity" in html
    assert "Beta Hospital" in html and "Joint study" in html and '<span class="ok">Linked</span>' in html
    assert 'id="prev-event"' in html
    first = AuditEvent.objects.filter(stream=ev.stream, seq=1).get()
    assert "the first event of the stream" in client.get(f"/audit/events/{first.pk}/").content.decode()


@pytest.mark.parametrize("who, status", [("cadmin", 200), ("auditor", 200), ("researcher", 403), ("hadmin1", 403),
                                         ("outsider", 404), ("hadmin3", 404)])
def test_event_detail_goes_through_the_access_policy(trail_world, client, who, status):
    w = trail_world
    client.force_login(w.users[who])
    ev = AuditEvent.objects.filter(consortium_id=w.c1.pk).first()
    assert client.get(f"/audit/events/{ev.pk}/").status_code == status


def test_events_outside_the_users_consortia_are_404(trail_world, client):
    w = trail_world
    client.force_login(w.users["auditor"])
    foreign = AuditEvent.objects.filter(consortium_id=w.c2.pk).first()
    platform_ev = AuditEvent.objects.get(action="platform.test_event")
    for pk in (foreign.pk, platform_ev.pk, AuditEvent.objects.order_by("-pk").first().pk + 1000):
        assert client.get(f"/audit/events/{pk}/").status_code == 404
