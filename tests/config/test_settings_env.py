"""Configuration: the typed environment readers (config/env.py) and what a bad value does to a
real process (`manage.py check` stops, naming the variable). Every variable is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import envbool, envfloat, envint, envlist, envstr

REPO = Path(__file__).resolve().parents[2]
VAR = "FEDPLATFORM_TEST_KNOB"


def _set(monkeypatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)


@pytest.mark.parametrize("value, expected", [(None, True), ("", True), ("1", True), ("0", False), ("TRUE", True),
                                             ("false", False), (" yes ", True), ("off", False)])
def test_envbool_reads_the_usual_spellings(monkeypatch, value, expected):
    _set(monkeypatch, value)
    assert envbool(VAR, True) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "y", "enabled"])
def test_envbool_refuses_anything_else_naming_the_variable(monkeypatch, value):
    _set(monkeypatch, value)
    with pytest.raises(ImproperlyConfigured) as exc:
        envbool(VAR, False)
    msg = str(exc.value)
    assert VAR in msg and repr(value) in msg and "expected 1 or 0" in msg and "default '0'" in msg


def test_envint_default_value_and_bounds(monkeypatch):
    _set(monkeypatch, None)
    assert envint(VAR, 16, lo=1, hi=1000) == 16
    for raw, expected in [("8", 8), ("1", 1), ("1000", 1000), ("2_000", 2000), (" 42 ", 42)]:
        _set(monkeypatch, raw)
        assert envint(VAR, 16, lo=1, hi=2000) == expected
    for raw in ["abc", "1.5", "0", "1001", "-3", "1e3"]:
        _set(monkeypatch, raw)
        with pytest.raises(ImproperlyConfigured, match=rf"{VAR}='{re.escape(raw)}' is not valid: "
                                                       r"expected a whole number from 1 to 1000 \(default 16"):
            envint(VAR, 16, lo=1, hi=1000)
    _set(monkeypatch, "-1")
    with pytest.raises(ImproperlyConfigured, match="a whole number of at least 0"):
        envint(VAR, 64, lo=0)


def test_envfloat_default_value_and_bounds(monkeypatch):
    _set(monkeypatch, None)
    assert envfloat(VAR, 5.0, lo=0.1, hi=3600) == 5.0
    _set(monkeypatch, "0.25")
    assert envfloat(VAR, 5.0, lo=0.1, hi=3600) == 0.25
    for raw in ["soon", "0", "3601", "nan", "inf", "-1"]:
        _set(monkeypatch, raw)
        with pytest.raises(ImproperlyConfigured, match=rf"{VAR}=.* expected a number from 0.1 to 3600"):
            envfloat(VAR, 5.0, lo=0.1, hi=3600)


def test_envstr_choices_pattern_and_secrets(monkeypatch):
    _set(monkeypatch, None)
    assert envstr(VAR, "INFO", choices=("DEBUG", "INFO")) == "INFO"
    _set(monkeypatch, "debug")
    assert envstr(VAR, "INFO", choices=("DEBUG", "INFO")) == "DEBUG"
    _set(monkeypatch, "loud")
    with pytest.raises(ImproperlyConfigured, match=f"{VAR}='loud' is not valid: expected one of DEBUG, INFO"):
        envstr(VAR, "INFO", choices=("DEBUG", "INFO"))
    _set(monkeypatch, "30/min")
    assert envstr(VAR, "1/s", pattern=r"[0-9]+/(s|min)", accepts="a rate") == "30/min"
    _set(monkeypatch, "http://user:s3cret@cache:6379/0")
    with pytest.raises(ImproperlyConfigured) as exc:
        envstr(VAR, "", pattern=r"redis://\S+", accepts="a Redis URL", secret=True)
    assert VAR in str(exc.value) and "a Redis URL" in str(exc.value) and "s3cret" not in str(exc.value)


def test_envlist_splits_and_checks_items(monkeypatch):
    _set(monkeypatch, None)
    assert envlist(VAR, ["localhost"]) == ["localhost"]
    _set(monkeypatch, "a.example.org, b.example.org,,")
    assert envlist(VAR, []) == ["a.example.org", "b.example.org"]
    _set(monkeypatch, "https://ok.example.org,platform.example.org")
    with pytest.raises(ImproperlyConfigured, match="'platform.example.org' is not an origin with its scheme"):
        envlist(VAR, [], item_pattern=r"https?://\S+", accepts="an origin with its scheme")


def _manage_check(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name, value, accepts", [
    ("FEDPLATFORM_WEB_DB_SLOTS", "abc", "a whole number from 1 to 1000"),
    ("DJANGO_DEBUG", "maybe", "1 or 0"),
    ("FEDPLATFORM_RECONCILE_S", "-5", "a number from 0.1 to 3600"),
    ("FEDPLATFORM_ENROL_RATE", "lots", "a rate like 30/min"),
])
def test_a_bad_value_stops_manage_py_at_start_up(name, value, accepts):
    r = _manage_check(**{name: value})
    assert r.returncode != 0
    assert f"configuration error: environment variable {name}='{value}' is not valid" in r.stderr
    assert accepts in r.stderr
    assert "Traceback" not in r.stderr  # the message, not a stack trace


def test_a_database_url_with_a_password_is_never_echoed():
    r = _manage_check(DATABASE_URL="postgress://admin:hunter2-secret@db:5432/platform")
    assert r.returncode != 0 and "DATABASE_URL is not valid" in r.stderr
    assert "hunter2-secret" not in r.stderr + r.stdout


def test_good_values_pass(tmp_path):
    r = _manage_check(FEDPLATFORM_WEB_DB_SLOTS="8", DJANGO_DEBUG="false", FEDPLATFORM_LOG_LEVEL="warning",
                      FEDPLATFORM_ENROL_RATE="100000/min", FEDPLATFORM_PORTAL="1")
    assert r.returncode == 0, r.stderr
    assert "no issues" in r.stdout


def _settings_variables() -> set[str]:
    source = (REPO / "platform" / "config" / "settings.py").read_text()
    return set(re.findall(r"env(?:str|bool|int|float|list)\(\s*\"([A-Z][A-Z0-9_]+)\"", source))


def test_every_variable_is_documented_in_the_readme_and_env_example():
    names = _settings_variables()
    assert {"DATABASE_URL", "REDIS_URL", "FEDPLATFORM_WEB_DB_SLOTS", "FEDPLATFORM_ENROL_RATE",
            "FEDPLATFORM_WORKSIGNAL_POLL_S", "FEDPLATFORM_INLINE_AGGREGATE_MAX", "FEDPLATFORM_DB_POOL"} <= names
    readme = (REPO / "README.md").read_text()
    example = (REPO / "deploy" / "env.example").read_text()
    assert sorted(n for n in names if f"| `{n}` |" not in readme) == []
    assert sorted(n for n in names if not re.search(rf"^#?\s*{n}=", example, re.M)) == []


def test_no_platform_module_reads_the_environment_behind_the_settings_back():
    """Knobs are read in config/settings.py only (config/env.py is its reader; config/wsgi.py sets
    the web process's pool switch before the settings load, see the comment there)."""
    allowed = {Path("config/env.py"), Path("config/wsgi.py")}
    root = REPO / "platform"
    readers = re.compile(r"os\.environ\.get\(|os\.environ\[|os\.getenv\(|getattr\(settings")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.relative_to(root) not in allowed and readers.search(p.read_text())]
    assert offenders == []
