"""`manage.py check --deploy` is clean with the documented production environment (deploy/env.example),
and what DJANGO_HTTPS turns on reaches the responses."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def documented_production_env(tmp_path) -> dict[str, str]:
    """The variables deploy/env.example sets, with its placeholders filled in as the operator must."""
    example = (REPO / "deploy" / "env.example").read_text()
    env = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, re.M))
    assert env["DJANGO_SECRET_KEY"].startswith("change-me")  # a placeholder: the operator sets a real one
    env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    env["FEDPLATFORM_VAR_DIR"] = str(tmp_path / "var")
    return env


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FEDPLATFORM_"))}
    r = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=REPO,
                       env={**base, **documented_production_env(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "System check identified no issues" in r.stdout, r.stdout + r.stderr
    assert "WARNING" not in r.stderr + r.stdout


def test_check_deploy_names_what_a_plain_http_deployment_lacks(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FEDPLATFORM_"))}
    env = {**base, **documented_production_env(tmp_path), "DJANGO_HTTPS": "0", "DJANGO_SECURE_COOKIES": "0"}
    r = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert "security.W004" in out and "security.W008" in out and "security.W012" in out  # HSTS, redirect, cookies


@pytest.mark.django_db
def test_https_behind_the_proxy_redirects_and_sends_hsts(client, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^api/health/$"]
    settings.SECURE_HSTS_SECONDS = 31536000
    plain = client.get("/login/")
    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    assert client.get("/api/health/?scope=web").status_code == 200  # the container health check talks plain http
    secure = client.get("/login/", headers={"X-Forwarded-Proto": "https"})
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"].startswith("max-age=31536000")
