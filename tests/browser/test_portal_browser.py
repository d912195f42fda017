"""The portal in a real browser (Playwright + Debian's Chromium) against the real platform processes
(gunicorn + Celery worker on PostgreSQL/Redis) and real node daemons.

Scenario: a researcher logs in and defines a study in the form, checks the privacy preview and
starts it; the admin of Alpha Hospital (whose node does not auto-approve) approves it in the inbox;
the nodes run it; the researcher watches it complete, sees the charts, downloads the model and
opens the model card. A consortium admin creates an enrolment token. Screenshots of every main
page go to test-output/screenshots/.
"""

from __future__ import annotations

import hashlib
import json
import re
import time

import pytest

from consortia.models import Membership
from consortia.services import consortium_create, enrolment_token_create, hospital_create, membership_grant
from devstack.demo_data import breast_cancer_split
from devstack.localstack import write_node_config
from studies.models import FinalModel, Participation, Study

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "portal-browser-test-pw-1"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-background-networking", "--disable-gpu"]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(output_dir):
    d = output_dir / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _user(django_user_model, name, consortium, role, hospital=None, **extra):
    u = django_user_model.objects.create_user(username=name, password=PASSWORD, **extra)
    membership_grant(user=u, consortium=consortium, role=role, hospital=hospital)
    return u


CSP_WATCH = ("document.addEventListener('securitypolicyviolation', e => console.error("
             "'CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' on ' + e.documentURI));")


def _watch_csp(context, violations: list[str]):
    """Every page of ``context`` reports Content-Security-Policy violations (Chromium logs them to the
    console, and the page's securitypolicyviolation event is relayed there as well)."""
    context.add_init_script(CSP_WATCH)

    def on_page(page):
        page.on("console", lambda m: violations.append(f"{page.url}: {m.text}")
                if "Content Security Policy" in m.text or "CSP violation" in m.text else None)
    context.on("page", on_page)
    return context


def _wait_js(page, expression: str, timeout: float = 30000) -> None:
    """page.wait_for_function polls by eval() inside the page, which the Content-Security-Policy forbids
    (no 'unsafe-eval'); page.evaluate runs through the DevTools protocol, outside the page's policy."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def _click_and_confirm(page, selector: str, expect: str) -> None:
    """Click a button whose form asks for confirmation (data-confirm → window.confirm) and accept
    the dialog, as a user would; the dialog must have been shown and say ``expect``. Playwright
    dismisses an unhandled dialog, which cancels the submit."""
    seen: list[str] = []

    def accept(dialog):
        seen.append(dialog.message)
        dialog.accept()
    page.once("dialog", accept)
    page.click(selector)       # returns once the dialog is closed (confirm blocks the page's submit handler)
    assert seen and expect in seen[0], seen


def _login(page, base, username):
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_researcher_runs_a_study_in_the_browser(stack, browser, shots, tmp_path, django_user_model):
    base = stack.base_url
    names = ["Alpha Hospital", "Beta Hospital"]
    data = breast_cancer_split(tmp_path / "hospitals", names)
    consortium = consortium_create(name="Browser consortium")
    hospitals, nodes = [], []
    for i, name in enumerate(names):
        h = hospital_create(consortium=consortium, name=name, max_epsilon=5.0,
                            allowed_models=["logistic_regression", "mlp_classifier"])
        _, token = enrolment_token_create(hospital=h)
        cfg = write_node_config(tmp_path / "hospitals" / f"node{i}" / "node.toml", base_url=base,
                                csv=data.hospital_csvs[name], max_epsilon=5.0, auto_approve=(i != 0), poll_wait_s=5)
        stack.enrol_node(cfg, token)
        hospitals.append(h)
        nodes.append(stack.start_node(f"n{i}", cfg))
    Role = Membership.Role
    _user(django_user_model, "rita", consortium, Role.RESEARCHER)
    _user(django_user_model, "hal", consortium, Role.HOSPITAL_ADMIN, hospitals[0])
    _user(django_user_model, "carla", consortium, Role.CONSORTIUM_ADMIN, is_staff=True)

    def procs_tail():
        return "\n".join(f"--- {p.name} ---\n{p.tail(30)}" for p in nodes + stack.procs)

    csp_violations: list[str] = []
    researcher = _watch_csp(browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True),
                            csp_violations)
    page = researcher.new_page()
    html_policies = []
    page.on("response", lambda r: html_policies.append((r.url, r.headers.get("content-security-policy")))
            if r.headers.get("content-type", "").startswith("text/html") else None)
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    bad_responses = []
    page.on("response", lambda r: bad_responses.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    # --- login (with one failed attempt first) and dashboard
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    page.wait_for_selector("text=Wrong username or password")   # the answer to the POST, not the page before it
    page.screenshot(path=str(shots / "01_login_failed.png"))
    _login(page, base, "rita")
    # Node heartbeats make both nodes online on the dashboard.
    deadline = time.monotonic() + 60
    while page.locator(".badge.node-online").count() < 2 and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    assert page.locator(".badge.node-online").count() == 2, procs_tail()
    page.screenshot(path=str(shots / "02_dashboard_empty.png"), full_page=True)

    # --- new study form
    page.click("text=+ New study")
    page.wait_for_selector("#privacy-preview table")   # live preview computed by Opacus on the server
    page.select_option("#id_settings", "auto")
    page.click("[data-preset=pilot]")           # a preset's values replace auto settings
    assert page.input_value("#id_settings") == "manual"
    assert page.input_value("#id_holdout") == "auto" and page.input_value("#id_local_baseline") == "yes"
    page.fill("#id_name", "Breast cancer pilot")
    page.fill("#id_purpose", "Predict malignancy from FNA features without pooling data.")
    page.fill("#id_schema_text", json.dumps(data.schema, indent=1))
    page.select_option("#id_model_type", "logistic_regression")
    page.fill("#id_rounds", "2")
    page.fill("#id_local_epochs", "1")
    page.fill("#id_batch_size", "32")
    page.fill("#id_learning_rate", "0.5")
    page.fill("#id_epsilon", "1.0")
    page.fill("#id_round_deadline_s", "90")
    page.fill("#id_quorum", "2")
    page.fill("#id_dataset_sizes", "150, 500, 2000")
    for h in hospitals:
        page.check(f"input[name=hospitals][value='{h.pk}']")
    _wait_js(page, "(() => { const t = document.querySelector('#privacy-preview').textContent;"
                   " return t.includes('ε = 1.0 (chosen)') && t.includes('2 rounds') && t.includes('2000'); })()")
    page.screenshot(path=str(shots / "03_new_study_form.png"), full_page=True)
    page.click("button:has-text('Create draft study')")
    page.wait_for_url(re.compile(r".*/studies/\d+/.*"))
    study = Study.objects.get(name="Breast cancer pilot")
    assert study.status == Study.Status.DRAFT and study.owner.username == "rita"
    assert page.locator("text=Before you start").is_visible()
    page.screenshot(path=str(shots / "04_study_draft_privacy.png"), full_page=True)
    # --- edit the draft: the form comes back filled in; saving keeps it a draft
    page.click("#edit-btn")
    page.wait_for_selector("#save-draft")
    assert page.input_value("#id_name") == "Breast cancer pilot" and page.input_value("#id_rounds") == "2"
    page.fill("#id_purpose", "Predict malignancy from FNA features without pooling data (edited).")
    page.screenshot(path=str(shots / "04a_edit_draft.png"), full_page=True)
    page.click("#save-draft")
    page.wait_for_selector("text=Draft saved")
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT and study.purpose.endswith("(edited).") and study.rounds == 2
    _click_and_confirm(page, "#start-btn", "Start recruitment for Breast cancer pilot?")
    page.wait_for_selector("text=Recruitment opened")
    assert Study.objects.get(pk=study.pk).status == Study.Status.RECRUITING

    # --- the hospital admin approves in the inbox
    admin_ctx = _watch_csp(browser.new_context(viewport={"width": 1280, "height": 900}), csp_violations)
    hp = admin_ctx.new_page()
    _login(hp, base, "hal")
    assert hp.locator("text=1 invitation waiting").is_visible()
    hp.click("text=Inbox")
    hp.screenshot(path=str(shots / "05_inbox.png"), full_page=True)
    hp.click("a:has-text('Review')")
    hp.wait_for_selector("#approve-btn")
    assert hp.locator("text=within the cap").is_visible()
    hp.screenshot(path=str(shots / "06_invitation.png"), full_page=True)
    hp.fill("#approve-note", "Approved by the data protection officer")
    _click_and_confirm(hp, "#approve-btn", "Approve study Breast cancer pilot for Alpha Hospital?")
    hp.wait_for_selector("text=Alpha Hospital approved study")
    assert Participation.objects.get(study=study, hospital=hospitals[0]).state == "approved"

    # --- the researcher watches it run (the page polls and reloads itself on status changes)
    seen_running = False
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        st = page.get_attribute("#live", "data-status")
        if st == "running" and not seen_running:
            seen_running = True
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / "07_study_running.png"), full_page=True)
        if st in ("failed", "cancelled"):
            break
        if st == "completed" and FinalModel.objects.filter(study=study).exists():
            page.reload()
            break
        time.sleep(1)
        if st == "completed":
            page.reload()
    study.refresh_from_db()
    assert study.status == Study.Status.COMPLETED, f"{study.status}: {study.status_reason}\n{procs_tail()}"
    # A settled page (a completed study is not polled, so nothing reloads it under our feet).
    page.goto(f"{base}/studies/{study.pk}/", wait_until="load")
    page.wait_for_selector("#download-model")
    # Charts are real images that loaded (SVG from the server).
    for img in ("#chart-metrics", "#chart-privacy"):
        _wait_js(page, f"document.querySelector('{img}').complete && "
                       f"document.querySelector('{img}').naturalWidth > 0")
    svg = page.request.get(f"{base}/studies/{study.pk}/charts/metrics.svg").text()
    # The legend names each hospital once (colour and marker) and each metric once (line style).
    assert ">Alpha Hospital</text>" in svg and ">Beta Hospital</text>" in svg and ">AUC</text>" in svg
    svg = page.request.get(f"{base}/studies/{study.pk}/charts/privacy.svg").text()
    assert "study budget" in svg
    assert page.locator("ol.rounds li.rs-done").count() == 2
    page.screenshot(path=str(shots / "08_study_completed.png"), full_page=True)

    # --- download the model: the bytes are the released, attested model
    with page.expect_download() as dl_info:
        page.click("#download-model")
    path = dl_info.value.path()
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert digest == FinalModel.objects.get(study=study).sha256
    page.click("#model-card")
    page.wait_for_selector("text=Privacy guarantee")
    assert page.locator(f"text={digest}").count() >= 1
    assert page.locator("text=not shared").count() >= 1
    page.screenshot(path=str(shots / "09_model_card.png"), full_page=True)
    # --- the study's audit report (HTML page) under the same policy: styled from its static stylesheet
    page.goto(f"{base}/audit/studies/{study.pk}/report/", wait_until="load")
    page.wait_for_selector("text=Audit chain verified")
    assert page.evaluate("getComputedStyle(document.querySelector('h2')).borderBottomStyle") == "solid"
    page.screenshot(path=str(shots / "09b_audit_report.png"), full_page=True)

    # --- consortium admin: hospitals and a one-time enrolment token
    ca = _watch_csp(browser.new_context(viewport={"width": 1280, "height": 900}), csp_violations).new_page()
    _login(ca, base, "carla")
    ca.click("header >> text=Hospitals")
    ca.screenshot(path=str(shots / "10_hospitals.png"), full_page=True)
    ca.fill("#id_name", "Delta Hospital")
    ca.click("button:has-text('Create hospital')")
    ca.wait_for_selector("text=Hospital Delta Hospital created")
    ca.click("button:has-text('Create enrolment token')")
    ca.wait_for_selector("#enrol-token")
    tok = ca.inner_text("#enrol-token").strip()
    assert tok and f"--token {tok}" in ca.inner_text("#node-commands")
    ca.screenshot(path=str(shots / "11_enrolment_token.png"), full_page=True)

    # --- the audit trail and the Django admin, as the consortium admin
    ca.goto(f"{base}/audit/trail/?study={study.pk}", wait_until="load")
    ca.goto(f"{base}/admin/", wait_until="load")
    ca.wait_for_selector("#site-name")

    assert not console_errors, (console_errors, bad_responses)
    assert csp_violations == []
    assert html_policies and all(policy and "default-src 'self'" in policy for _, policy in html_policies), html_policies
    for n in nodes:
        assert n.alive(), n.tail()
    # Under Playwright's sync API (greenlets) this body's queries get a database connection other
    # than the fixtures' one, which nothing else closes: without this the test database stays open
    # at the end of the session and pytest-django cannot drop it (seen as a teardown warning).
    from django.db import connection

    connection.close()
