"""Content-Security-Policy `default-src 'self'` on every HTML page, and templates that satisfy it (the
browser test, tests/browser, watches for violations on every page it visits)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((REPO / "platform").rglob("templates/**/*.html"))


@pytest.mark.django_db
def test_html_pages_carry_the_policy_and_json_answers_do_not_need_it(client):
    resp = client.get("/login/")
    assert resp.status_code == 200
    policy = resp["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert client.get("/admin/login/")["Content-Security-Policy"] == policy
    assert "Content-Security-Policy" not in client.get("/api/health/")


def test_templates_have_no_inline_script_style_or_event_handler():
    assert len(TEMPLATES) > 10
    offenders = []
    for path in TEMPLATES:
        text = path.read_text()
        if path.name == "report.html":  # the PDF and the exported file inline the stylesheet; the web page links it
            text = re.sub(r"\{% if inline_css %\}.*?\{% else %\}", "", text, flags=re.S)
        for pattern in (r"\sstyle\s*=", r"<style", r"\son[a-z]+\s*=", r"javascript:", r"=\s*\"data:",
                        r"<script(?![^>]*\ssrc=)(?![^>]*type=\"application/json\")"):
            if re.search(pattern, text, re.I):
                offenders.append(f"{path.relative_to(REPO)}: {pattern}")
    assert offenders == []


@pytest.mark.parametrize("template", ["report.html", "trail.html"])
def test_audit_pages_link_their_static_stylesheet(template):
    text = (REPO / "platform" / "reports" / "templates" / "reports" / template).read_text()
    assert f"{{% static 'reports/{template.replace('.html', '.css')}' %}}" in text
    assert (REPO / "platform" / "reports" / "static" / "reports" / template.replace(".html", ".css")).is_file()
