"""Login, throttling, audit events of logins, CSRF on every POST."""

from __future__ import annotations

import pytest
from django.test import Client
from portal_support import PASSWORD

from audit.models import AuditEvent
from portal import auth
from studies.models import Study

pytestmark = pytest.mark.django_db


def login(client, username, password, ip="10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_login_logout_and_audit(world, client):
    r = login(client, "researcher", PASSWORD)
    assert r.status_code == 302 and r["Location"] == "/"
    assert client.get("/").status_code == 200
    ev = AuditEvent.objects.filter(action="auth.login").get()
    assert ev.actor == f"user:{world.users['researcher'].pk}:researcher" and ev.data["ip"] == "10.0.0.1"
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302
    assert client.get("/logout/").status_code == 405   # logout only by POST (CSRF-protected)


def test_failed_login_is_audited_without_password(world, client):
    r = login(client, "researcher", "wrong-password-123")
    assert r.status_code == 200 and b"Wrong username or password" in r.content
    ev = AuditEvent.objects.filter(action="auth.login_failed").get()
    assert ev.data == {"username": "researcher", "ip": "10.0.0.1", "reason": "bad_credentials"}
    assert not AuditEvent.objects.filter(data__icontains="wrong-password-123").exists()
    assert "wrong-password-123" not in str(list(AuditEvent.objects.values()))


def test_throttling_locks_user_and_ip(world, client):
    for _ in range(auth.MAX_FAILURES):
        assert login(client, "researcher", "nope-nope-nope").status_code == 200
    # Locked now: even the right password is refused from this address.
    r = login(client, "researcher", PASSWORD)
    assert r.status_code == 429 and b"locked" in r.content
    assert client.get("/").status_code == 302
    assert AuditEvent.objects.filter(action="auth.login_failed", data__reason="locked").count() == 1
    # Case and whitespace do not dodge the lock.
    assert login(client, " Researcher ", PASSWORD).status_code == 429
    # Another address is not locked out (the attacker does not lock the real user everywhere)...
    other = Client()
    assert login(other, "researcher", PASSWORD, ip="10.0.0.2").status_code == 302
    # ...and other users from the first address are not affected.
    assert login(Client(), "auditor", PASSWORD).status_code == 302


def test_lock_expires(world, client, monkeypatch):
    for _ in range(auth.MAX_FAILURES):
        login(client, "auditor", "nope-nope-nope")
    assert login(client, "auditor", PASSWORD).status_code == 429
    from datetime import timedelta

    from django.utils import timezone

    later = timezone.now() + timedelta(minutes=auth.LOCK_MINUTES + 1)
    monkeypatch.setattr(auth.timezone, "now", lambda: later)
    assert login(client, "auditor", PASSWORD).status_code == 302


def test_per_user_lock_across_addresses(world, client):
    for i in range(auth.MAX_FAILURES_PER_USER):
        login(Client(), "cadmin", "nope-nope-nope", ip=f"10.1.{i}.1")
    assert login(client, "cadmin", PASSWORD, ip="10.9.9.9").status_code == 429


def test_success_resets_the_counter(world, client):
    for _ in range(auth.MAX_FAILURES - 1):
        login(client, "researcher", "nope-nope-nope")
    assert login(client, "researcher", PASSWORD).status_code == 302
    client.post("/logout/")
    for _ in range(auth.MAX_FAILURES - 1):
        login(client, "researcher", "nope-nope-nope")
    assert login(client, "researcher", PASSWORD).status_code == 302


def test_open_redirect_refused(world, client):
    r = client.post("/login/?next=https://evil.example/", {"username": "researcher", "password": PASSWORD})
    assert r.status_code == 302 and r["Location"] == "/"
    client.post("/logout/")
    r = client.post("/login/", {"username": "researcher", "password": PASSWORD, "next": f"/studies/{world.s1.pk}/"})
    assert r["Location"] == f"/studies/{world.s1.pk}/"


def test_csrf_enforced_on_every_post(world):
    c = Client(enforce_csrf_checks=True)
    assert c.post("/login/", {"username": "researcher", "password": PASSWORD}).status_code == 403
    c.force_login(world.users["researcher"])
    posts = [f"/studies/{world.s1.pk}/cancel/", f"/studies/{world.draft.pk}/start/", "/logout/", "/studies/new/"]
    for path in posts:
        assert c.post(path, {}).status_code == 403, path
    c.force_login(world.users["cadmin"])
    for path in [f"/hospitals/{world.h1.pk}/token/", f"/hospitals/{world.h1.pk}/revoke/", "/hospitals/"]:
        assert c.post(path, {}).status_code == 403, path
    c.force_login(world.users["hadmin1"])
    assert c.post(f"/inbox/{world.p1.pk}/", {"decision": "approve"}).status_code == 403
    assert Study.objects.get(pk=world.s1.pk).status == Study.Status.RECRUITING
    assert world.p1.__class__.objects.get(pk=world.p1.pk).state == "invited"
    assert not world.h1.enrolment_tokens.exists()
    # With the token (as a browser sends it) the same POST goes through.
    c.force_login(world.users["researcher"])
    c.get(f"/studies/{world.s1.pk}/")
    token = c.cookies["csrftoken"].value
    r = c.post(f"/studies/{world.s1.pk}/cancel/", {"csrfmiddlewaretoken": token, "reason": "duplicate study"})
    assert r.status_code == 302
    assert Study.objects.get(pk=world.s1.pk).status == Study.Status.CANCELLED
