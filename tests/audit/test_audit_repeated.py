"""Repeated failures do not flood the append-only trail: failed logins and refused enrolments are
summarised per window with a count; the events still account for every attempt, a lock is always
recorded, and the lockout itself works as before."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import RequestFactory
from django.utils import timezone

from audit.models import AuditEvent
from audit.repeated import flush_due, record_repeated
from audit.selectors import verify_all
from consortia.services import EnrolmentError, consortium_create, enrolment_token_create, hospital_create, node_enrol
from portal import auth

PASSWORD = "a-long-correct-password-1"


@pytest.fixture
def alice(postgres, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # the hasher's cost is not tested here
    return get_user_model().objects.create_user("alice", password=PASSWORD)


def login(username: str, password: str, ip: str = "10.0.0.1"):
    return auth.attempt_login(RequestFactory().post("/login/", REMOTE_ADDR=ip), username, password)


def attempts_accounted(action: str, **data_filter) -> int:
    """How many occurrences the events of an action stand for (an event without "count" is one)."""
    return sum(ev.data.get("count", 1) for ev in AuditEvent.objects.filter(action=action, **{
        f"data__{k}": v for k, v in data_filter.items()}))


def later(minutes: float):
    return timezone.now() + timedelta(minutes=minutes)


def test_fifty_failed_logins_leave_a_few_events_that_account_for_all(alice):
    for _ in range(50):
        user, message = login("alice", "wrong-password-123")
        assert user is None and message
    # Locked after MAX_FAILURES: even the right password is refused from this address.
    user, message = login("alice", PASSWORD)
    assert user is None and "locked" in message
    flush_due(now=later(auth.LOCK_MINUTES + auth.WINDOW_MINUTES + 1))  # every window has closed
    failed = AuditEvent.objects.filter(action="auth.login_failed")
    assert failed.count() <= 4, [(e.seq, e.data) for e in failed]
    assert attempts_accounted("auth.login_failed") == 51
    assert attempts_accounted("auth.login_failed", reason="bad_credentials") == auth.MAX_FAILURES
    assert attempts_accounted("auth.login_failed", reason="locked") == 51 - auth.MAX_FAILURES
    lock = AuditEvent.objects.get(action="auth.login_locked")
    assert lock.data["scope"] == "user+address" and lock.data["failures"] == auth.MAX_FAILURES
    assert lock.data["username"] == "alice" and lock.data["ip"] == "10.0.0.1"
    # The failures that led to the lock are written before it.
    assert all(e.seq < lock.seq for e in failed.filter(data__reason="bad_credentials"))
    first = failed.order_by("seq").first()
    assert first.data == {"username": "alice", "ip": "10.0.0.1", "reason": "bad_credentials"}
    assert not AuditEvent.objects.filter(data__icontains="wrong-password-123").exists()
    assert all(r.ok for r in verify_all())


def test_a_distributed_guess_is_summarised_with_its_addresses(alice):
    n = auth.MAX_FAILURES_PER_USER + 5
    for i in range(n):
        login("alice", "wrong-password-123", ip=f"10.1.{i}.1")
    # The per-user lock holds everywhere.
    assert login("alice", PASSWORD, ip="10.9.9.9")[0] is None
    locks = AuditEvent.objects.filter(action="auth.login_locked")
    assert [e.data["scope"] for e in locks] == ["user"]
    assert locks[0].data["failures"] == auth.MAX_FAILURES_PER_USER
    flush_due(now=later(auth.LOCK_MINUTES + auth.WINDOW_MINUTES + 1))
    assert AuditEvent.objects.filter(action="auth.login_failed").count() <= 5
    assert attempts_accounted("auth.login_failed") == n + 1
    summary = AuditEvent.objects.filter(action="auth.login_failed", data__reason="bad_credentials",
                                        data__has_key="count").order_by("seq").first()
    assert summary.data["count"] == auth.MAX_FAILURES_PER_USER - 1
    # The addresses of the counted attempts (the first one is in the first event).
    assert summary.data["distinct"]["ip"] == [f"10.1.{i}.1" for i in range(1, auth.MAX_FAILURES_PER_USER)]
    assert summary.data["first_at"] <= summary.data["last_at"]


def test_a_successful_login_writes_the_pending_failures_first(alice):
    for _ in range(3):
        login("alice", "wrong-password-123")
    assert login("alice", PASSWORD)[0] == alice
    events = list(AuditEvent.objects.filter(stream="platform").order_by("seq"))
    assert [e.action for e in events[-3:]] == ["auth.login_failed", "auth.login_failed", "auth.login"]
    assert events[-2].data["count"] == 2
    assert attempts_accounted("auth.login_failed") == 3


def test_a_new_window_records_its_first_failure_again(alice, monkeypatch):
    login("alice", "wrong-password-123")
    login("alice", "wrong-password-123")
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 1
    # The window closes; the beat task writes the summary, then the next failure opens a new window.
    from audit.tasks import flush_summaries

    moved = later(auth.WINDOW_MINUTES + 1)
    monkeypatch.setattr(timezone, "now", lambda: moved)
    assert flush_summaries() == 1
    login("alice", "wrong-password-123")
    assert [e.data.get("count", 1) for e in AuditEvent.objects.filter(action="auth.login_failed").order_by("seq")] == [
        1, 1, 1]
    assert attempts_accounted("auth.login_failed") == 3


def test_refused_enrolments_are_summarised(postgres):
    c = consortium_create(name="Enrol consortium")
    h = hospital_create(consortium=c, name="Hospital E")
    _, token = enrolment_token_create(hospital=h)
    key = base64.b64encode(b"\x01" * 32).decode()
    node_enrol(enrolment_token=token, public_key=key, node_version="n1")
    for i in range(30):  # a node retrying with its used token, and someone guessing tokens
        with pytest.raises(EnrolmentError, match="already used"):
            node_enrol(enrolment_token=token, public_key=key, node_version=f"n{i}")
        with pytest.raises(EnrolmentError, match="unknown enrolment token"):
            node_enrol(enrolment_token=f"guess-{i}", public_key=key, node_version="x")
    flush_due(now=timezone.now() + timedelta(hours=1))
    refused = AuditEvent.objects.filter(action="node.enrol_refused")
    assert refused.count() == 4
    assert attempts_accounted("node.enrol_refused") == 60
    assert sum(e.data.get("count", 1) for e in refused.filter(hospital_id=h.pk)) == 30
    used = refused.filter(hospital_id=h.pk, data__has_key="count").get()
    assert used.data["count"] == 29 and used.data["node_version"] == "n29"
    assert not AuditEvent.objects.filter(data__icontains="guess-").exists()  # tokens are never recorded
    assert all(r.ok for r in verify_all())


def test_record_repeated_refuses_what_json_cannot_carry(postgres):
    from audit.chain import AuditDataError

    with pytest.raises(AuditDataError, match="NaN"), transaction.atomic():
        record_repeated(key="k", window_s=60, action="x.y", data={"v": float("nan")})
