"""`manage.py bootstrap`: the first consortium and its admin on a fresh install."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from audit.selectors import verify_all
from consortia.models import Consortium, Membership

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"


@pytest.fixture
def password_file(tmp_path) -> Path:
    f = tmp_path / "admin-password"
    f.write_text(PASSWORD + "\n")
    return f


def _bootstrap(password_file: Path | None, **overrides) -> str:
    opts = {"consortium": "Nordic cardiology", "admin": "alice", "email": "alice@example.org", **overrides}
    if password_file is not None:
        opts["password_file"] = password_file
    out = StringIO()
    call_command("bootstrap", stdout=out, **opts)
    return out.getvalue()


def _state() -> tuple[int, int, int, int]:
    return (Consortium.objects.count(), get_user_model().objects.count(), Membership.objects.count(),
            AuditEvent.objects.count())


@pytest.mark.django_db
def test_creates_the_consortium_and_its_admin_with_audit_events(password_file):
    out = _bootstrap(password_file, description="Heart failure studies")
    assert "Created consortium 'Nordic cardiology'" in out and "alice" in out and PASSWORD not in out

    consortium = Consortium.objects.get(name="Nordic cardiology")
    assert consortium.description == "Heart failure studies"
    alice = get_user_model().objects.get(username="alice")
    assert alice.email == "alice@example.org" and alice.is_staff and alice.is_superuser
    assert alice.check_password(PASSWORD) and alice.password.startswith("argon2")
    membership = Membership.objects.get(user=alice)
    assert (membership.consortium, membership.role, membership.hospital) == (consortium, "consortium_admin", None)

    events = list(AuditEvent.objects.order_by("id").values_list("action", "actor", "consortium_id", "data"))
    assert events == [("consortium.created", "bootstrap", consortium.pk, {"name": "Nordic cardiology"}),
                      ("membership.granted", "bootstrap", consortium.pk, {"user": "alice", "role": "consortium_admin"})]
    assert all(r.ok for r in verify_all())
    assert PASSWORD not in str(list(AuditEvent.objects.values_list("data", flat=True)))


@pytest.mark.django_db
def test_an_existing_consortium_is_refused_and_nothing_changes(password_file):
    _bootstrap(password_file)
    before = _state()
    with pytest.raises(CommandError, match="a consortium named 'nordic cardiology' already exists: nothing was changed"):
        _bootstrap(password_file, consortium="nordic cardiology", admin="bob", email="bob@example.org")
    with pytest.raises(CommandError, match="a user named 'ALICE' already exists: nothing was changed"):
        _bootstrap(password_file, consortium="Another consortium", admin="ALICE")
    assert _state() == before


@pytest.mark.django_db
@pytest.mark.parametrize("overrides, message", [
    ({"consortium": "   "}, "--consortium must be a name of 1 to 200 characters"),
    ({"consortium": "x" * 201}, "--consortium must be a name of 1 to 200 characters"),
    ({"admin": "alice smith"}, "--admin 'alice smith' is not a valid username"),
    ({"admin": ""}, "--admin '' is not a valid username"),
    ({"email": "alice-at-example.org"}, "--email 'alice-at-example.org' is not a valid e-mail address"),
])
def test_bad_arguments_are_refused_with_a_clear_message(password_file, overrides, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _bootstrap(password_file, **overrides)
    assert _state() == (0, 0, 0, 0)


@pytest.mark.django_db
def test_bad_passwords_are_refused(tmp_path):
    weak = tmp_path / "weak"
    weak.write_text("password\n")
    with pytest.raises(CommandError, match="the password was refused: .*too short.*too common"):
        _bootstrap(weak)
    like_user = tmp_path / "like-user"
    like_user.write_text("alice@example.org\n")
    with pytest.raises(CommandError, match="too similar to the"):
        _bootstrap(like_user)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(CommandError, match="is empty: its first line must be the password"):
        _bootstrap(empty)
    with pytest.raises(CommandError, match="cannot read --password-file .*missing: FileNotFoundError"):
        _bootstrap(tmp_path / "missing")
    with pytest.raises(CommandError, match="no password: give --password-file FILE"):
        _bootstrap(None)  # pytest's stdin is not a terminal: no prompt, a clear error
    assert _state() == (0, 0, 0, 0)


def test_a_fresh_install_on_the_embedded_default(tmp_path, password_file):
    """Real processes on a fresh SQLite database: refused before `migrate`, then created once."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["FEDPLATFORM_VAR_DIR"] = str(tmp_path / "var")
    args = [sys.executable, "manage.py", "bootstrap", "--consortium", "Fresh", "--admin", "root", "--email",
            "root@example.org", "--password-file", str(password_file)]

    def run(cmd):
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    r = run(args)
    assert r.returncode != 0 and "the database is not migrated yet: run `python manage.py migrate` first" in r.stderr
    r = run([sys.executable, "manage.py", "migrate", "--noinput"])
    assert r.returncode == 0, r.stderr
    r = run(args)
    assert r.returncode == 0, r.stderr
    assert "Created consortium 'Fresh'" in r.stdout
    assert (tmp_path / "var" / "platform.sqlite3").exists()
    r = run(args)
    assert r.returncode != 0 and "a consortium named 'Fresh' already exists" in r.stderr
