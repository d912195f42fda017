"""Login with throttling and audit events.

A (username, client IP) pair is locked for LOCK_MINUTES after MAX_FAILURES failed attempts within
WINDOW_MINUTES; a username alone is locked after MAX_FAILURES_PER_USER failures from any address
(slows down a distributed guess). State lives in the database so every web process shares it.
Logins, failed logins and locks are audit events (repeated failures summarised with a count, see
audit/repeated.py); the password is never logged.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import authenticate
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.repeated import flush_summary, record_repeated
from audit.services import actor_label, audit_record

from .models import LoginThrottle

MAX_FAILURES = settings.PORTAL_LOGIN_MAX_FAILURES
MAX_FAILURES_PER_USER = settings.PORTAL_LOGIN_MAX_FAILURES_PER_USER
WINDOW_MINUTES = settings.PORTAL_LOGIN_WINDOW_MINUTES
LOCK_MINUTES = settings.PORTAL_LOGIN_LOCK_MINUTES


def client_ip(request) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy rewrites it.
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _keys(username: str, ip: str) -> list[tuple[str, int]]:
    u = username.strip().lower()[:150]
    return [(f"u+ip:{u}|{ip}", MAX_FAILURES), (f"u:{u}", MAX_FAILURES_PER_USER)]


def locked_until(username: str, ip: str):
    now = timezone.now()
    rows = LoginThrottle.objects.filter(key__in=[k for k, _ in _keys(username, ip)], locked_until__gt=now)
    return max((r.locked_until for r in rows), default=None)


def _register_failure(username: str, ip: str) -> list[tuple[str, int, object]]:
    """Count a failure on every key; returns the locks it took: (key, failures, locked_until)."""
    now = timezone.now()
    taken = []
    for key, limit in _keys(username, ip):
        for _ in range(2):
            try:
                with transaction.atomic():
                    row, _created = LoginThrottle.objects.select_for_update().get_or_create(
                        key=key, defaults={"window_start": now})
                    if row.window_start < now - timedelta(minutes=WINDOW_MINUTES) and not (
                            row.locked_until and row.locked_until > now):
                        row.failures, row.window_start, row.locked_until = 0, now, None
                    row.failures += 1
                    if row.failures >= limit:
                        if not (row.locked_until and row.locked_until > now):
                            taken.append((key, row.failures, now + timedelta(minutes=LOCK_MINUTES)))
                        row.locked_until = now + timedelta(minutes=LOCK_MINUTES)
                    row.save()
                break
            except IntegrityError:  # two first failures at once: retry, the row exists now
                continue
    return taken


def _clear(username: str, ip: str) -> None:
    LoginThrottle.objects.filter(key=_keys(username, ip)[0][0]).delete()


def _failures_key(username: str, reason: str) -> str:
    # Failed logins are summarised per user and reason (audit.repeated): one event per window, with
    # a count, however many attempts an attacker makes from however many addresses.
    return f"auth.login_failed|{reason}|{username.strip().lower()[:150]}"


def _record_failure(username: str, ip: str, reason: str, window_s: float) -> None:
    record_repeated(key=_failures_key(username, reason), window_s=window_s, action="auth.login_failed",
                    actor=f"anonymous:{username[:150]}", data={"username": username[:150], "ip": ip, "reason": reason})


def attempt_login(request, username: str, password: str):
    """(user, error message). Records auth.login / auth.login_failed (summarised) / auth.login_locked audit events."""
    ip = client_ip(request)
    username = (username or "").strip()
    until = locked_until(username, ip)
    if until is not None:
        with transaction.atomic():
            _record_failure(username, ip, "locked", max(1.0, (until - timezone.now()).total_seconds()))
        minutes = max(1, int((until - timezone.now()).total_seconds() // 60) + 1)
        return None, (f"Too many failed sign-in attempts. This account is locked for about {minutes} minute(s) "
                      "from this address; try again later or ask your consortium admin.")
    user = authenticate(request, username=username, password=password) if username and password else None
    if user is None:
        locks = _register_failure(username, ip)
        with transaction.atomic():
            _record_failure(username, ip, "bad_credentials", WINDOW_MINUTES * 60)
            if locks:  # a lock is always recorded, after the failures that led to it
                flush_summary(_failures_key(username, "bad_credentials"))
            for key, failures, lock_end in locks:
                audit_record(action="auth.login_locked", actor=f"anonymous:{username[:150]}",
                             data={"username": username[:150], "ip": ip, "failures": failures,
                                   "scope": "user" if key.startswith("u:") else "user+address",
                                   "locked_until": lock_end.isoformat()})
        return None, "Wrong username or password."
    _clear(username, ip)
    with transaction.atomic():
        flush_summary(_failures_key(username, "bad_credentials"))
        audit_record(action="auth.login", actor=actor_label(user=user), data={"username": user.get_username(), "ip": ip})
    return user, ""
