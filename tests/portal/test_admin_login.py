"""Django admin's login goes through the portal's throttle and audit (config/admin_site.py)."""

from __future__ import annotations

import pytest
from portal_support import PASSWORD

from audit.models import AuditEvent
from portal import auth

pytestmark = pytest.mark.django_db


def admin_login(client, username, password, ip="10.0.0.9"):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"},
                       REMOTE_ADDR=ip)


def test_admin_login_is_audited(world, client):
    r = admin_login(client, "cadmin", PASSWORD)
    assert r.status_code == 302 and r["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    ev = AuditEvent.objects.get(action="auth.login")
    assert ev.data == {"username": "cadmin", "ip": "10.0.0.9"}


def test_admin_login_failures_are_audited_and_locked(world, client):
    for _ in range(auth.MAX_FAILURES):
        r = admin_login(client, "cadmin", "guess-guess-guess")
        assert r.status_code == 200 and b"Wrong username or password" in r.content
    assert AuditEvent.objects.filter(action="auth.login_locked", data__username="cadmin").count() == 1
    assert AuditEvent.objects.filter(action="auth.login_failed", data__reason="bad_credentials").exists()
    # Locked: the right password is refused too, and the portal shares the lock.
    r = admin_login(client, "cadmin", PASSWORD)
    assert r.status_code == 200 and b"locked" in r.content
    assert client.get("/admin/").status_code == 302
    assert client.post("/login/", {"username": "cadmin", "password": PASSWORD}, REMOTE_ADDR="10.0.0.9").status_code == 429
    assert not AuditEvent.objects.filter(action="auth.login").exists()


def test_admin_login_refuses_a_non_staff_user(world, client):
    r = admin_login(client, "researcher", PASSWORD)
    assert r.status_code == 200 and client.get("/admin/").status_code == 302
