"""The portal in a real browser (Playwright + Debian's Chromium) against the real platform processes
(gunicorn + Celery worker on PostgreSQL/Redis) and real node daemons, on a fresh install: no Django
admin, no shell, no objects made by the test in the database.

One journey, every role, one study:
- consortium admin: the first-run page creates the consortium and her account; she adds two
  hospitals (with their declared limits), creates an enrolment token for each in the portal (the
  test then enrols and starts each node daemon with it, as a hospital's IT would), and invites a
  researcher, a hospital admin of Alpha Hospital and an auditor on the People page;
- each invited person opens the one-time link from the e-mail (console e-mail backend: the web
  server's log) and sets a password;
- researcher: defines the study in the form, checks the privacy preview, edits the draft, starts it;
- hospital admin (Alpha's node does not auto-approve): approves in the inbox, reads the hospital page;
- researcher: follows the run until it completes, sees the charts, downloads the model, opens the
  model card and the study's audit report;
- auditor: the trail, an event, the report; downloads the JSONL export and verifies it with the
  standalone script of docs/audit.md; its head hash is the report's.
Every page is checked with the vendored axe-core (no serious or critical violation) and must not
scroll sideways, at 1280x800 during the journey, then revisited at 390x844. Screenshots of each page
per role and viewport go to test-output/screenshots/<viewport>/.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.demo_data import breast_cancer_split
from devstack.localstack import write_node_config
from studies.models import FinalModel, Participation, Study

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "portal-browser-test-pw-1"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-background-networking", "--disable-gpu"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
AXE_JS = (Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js").read_text()
AXE_PATH = "/__test__/axe.min.js"   # served to the page by the test (Playwright route), same origin as the portal
DOCS_AUDIT = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
AXE_RUN = """async () => {
  const r = await axe.run(document, {resultTypes: ["violations"]});
  return r.violations.filter(v => v.impact === "serious" || v.impact === "critical").map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 4).map(n => n.target.join(" ") + " :: " + n.html.slice(0, 200))}));
}"""
SIDEWAYS = "document.documentElement.scrollWidth - document.documentElement.clientWidth"


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
    for old in d.rglob("*.png"):
        old.unlink()
    return d


CSP_WATCH = ("document.addEventListener('securitypolicyviolation', e => console.error("
             "'CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' on ' + e.documentURI));")


class Pages:
    """Every page a role sees: axe-core and the sideways-scroll check run on it, a screenshot is
    kept, and its address is remembered so the page is revisited at the other viewport."""

    def __init__(self, browser, base: str, shots: Path):
        self.browser, self.base, self.shots = browser, base, shots
        self.problems: list[str] = []
        self.csp: list[str] = []
        self.console_errors: list[str] = []
        self.bad_responses: list[str] = []
        self.html_policies: list[tuple[str, str | None]] = []
        self.visited: dict[str, list[tuple[str, str]]] = {}
        self.n = 0

    def context(self, role: str, **kw):
        ctx = self.browser.new_context(viewport=DESKTOP, **kw)
        ctx.add_init_script(CSP_WATCH)
        ctx.route(f"{self.base}{AXE_PATH}", lambda route: route.fulfill(
            status=200, body=AXE_JS, content_type="application/javascript"))
        page = ctx.new_page()
        page.on("console", lambda m: self.csp.append(f"{page.url}: {m.text}")
                if "Content Security Policy" in m.text or "CSP violation" in m.text else None)
        page.on("console", lambda m: self.console_errors.append(f"{role} {page.url}: {m.text}")
                if m.type == "error" else None)
        page.on("response", lambda r: self.bad_responses.append(f"{role}: {r.status} {r.url}")
                if r.status >= 400 else None)
        page.on("response", lambda r: self.html_policies.append((r.url, r.headers.get("content-security-policy")))
                if r.headers.get("content-type", "").startswith("text/html") else None)
        self.visited[role] = []
        return page

    def check(self, page, role: str, name: str, *, revisit: bool = True) -> None:
        page.wait_for_load_state("load")
        vp = page.viewport_size
        tag = f"{vp['width']}x{vp['height']}"
        self.n += 1
        page.screenshot(path=str(self.shots / tag / f"{self.n:02d}-{role}-{name}.png"), full_page=True)
        if page.evaluate("typeof window.axe") == "undefined":
            page.add_script_tag(url=f"{self.base}{AXE_PATH}")
        for v in page.evaluate(AXE_RUN):
            self.problems.append(f"{tag} {role} {name} ({page.url}): axe {v['impact']} {v['id']}: {v['help']}\n    "
                                 + "\n    ".join(v["nodes"]))
        over = page.evaluate(SIDEWAYS)
        if over > 0:
            self.problems.append(f"{tag} {role} {name} ({page.url}): scrolls sideways by {over}px")
        if revisit:
            self.visited[role].append((name, page.url))

    def revisit(self, role: str, page, viewport: dict) -> None:
        page.set_viewport_size(viewport)
        for name, url in self.visited[role]:
            page.goto(url, wait_until="load")
            self.check(page, role, name, revisit=False)


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


def _wait_js(page, expression: str, timeout: float = 30000) -> None:
    """page.wait_for_function polls by eval() inside the page, which the Content-Security-Policy forbids
    (no 'unsafe-eval'); page.evaluate runs through the DevTools protocol, outside the page's policy."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def _reload_until(page, selector: str, timeout_s: float, count: int = 1) -> None:
    """A page that is not live: reload it until ``count`` elements match ``selector``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            page.locator(selector).nth(count - 1).wait_for(state="attached", timeout=2000)
            return
        except PlaywrightTimeout:
            assert time.monotonic() < deadline, f"{selector} x{count} not on {page.url} within {timeout_s}s"
            page.reload(wait_until="load")


def _login(page, base, username):
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def _mailed_link(web_log: Path, email: str, timeout_s: float = 20) -> str:
    """The one-time link of the last e-mail to ``email`` that the console backend wrote to the web
    server's output."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = web_log.read_text(errors="replace")
        msgs = [m for m in re.split(r"\n-{20,}\n", text) if re.search(rf"^To: {re.escape(email)}$", m, re.M)]
        links = re.findall(r"https?://\S+/password/set/\S+/", msgs[-1]) if msgs else []
        if links:
            return links[-1]
        assert time.monotonic() < deadline, f"no e-mail to {email} in {web_log}:\n{text[-3000:]}"
        time.sleep(0.1)


def _verify_snippet() -> str:
    m = re.search(r"<!-- verify-snippet:start -->\s*```python\n(.*?)```\s*<!-- verify-snippet:end -->",
                  DOCS_AUDIT.read_text(), re.S)
    assert m, "docs/audit.md lost its verification script"
    return m.group(1)


def test_a_consortium_runs_a_study_in_the_browser(stack, browser, shots, tmp_path):
    base = stack.base_url
    web_log = next(p for p in stack.procs if p.name == "web").log_path
    names = ["Alpha Hospital", "Beta Hospital"]
    data = breast_cancer_split(tmp_path / "hospitals", names)
    pages = Pages(browser, base, shots)
    nodes = []

    def procs_tail():
        return "\n".join(f"--- {p.name} ---\n{p.tail(30)}" for p in nodes + stack.procs)

    # --- consortium admin: the first run, on an install with nothing in it
    ca = pages.context("admin")
    ca.goto(f"{base}/")
    ca.wait_for_selector("#first-run")
    pages.check(ca, "admin", "login-first-run")
    ca.click("#first-run a")
    ca.fill("#id_consortium", "Browser consortium")
    ca.fill("#id_description", "Breast cancer studies across two hospitals.")
    ca.fill("#id_full_name", "Carla Admin")
    ca.fill("#id_email", "carla@example.org")
    ca.fill("#id_password1", PASSWORD)
    ca.fill("#id_password2", PASSWORD)
    pages.check(ca, "admin", "first-run-setup", revisit=False)   # closes once done (404 afterwards)
    ca.click("button:has-text('Create the consortium and my account')")
    ca.wait_for_selector("text=is set up and you are its admin")
    pages.check(ca, "admin", "hospitals-empty", revisit=False)

    # --- hospitals with their declared limits; a token for each node; the hospital's IT enrols and starts it
    for i, name in enumerate(names):
        ca.goto(f"{base}/hospitals/")
        ca.fill("#id_name", name)
        ca.fill("#id_max_epsilon", "5")
        for model in ("logistic_regression", "mlp_classifier"):
            ca.check(f"input[name=allowed_models][value={model}]")
        ca.click("button:has-text('Create hospital')")
        ca.wait_for_selector(f"text=Hospital {name} created")
        ca.click("button:has-text('Create enrolment token')")
        ca.wait_for_selector("#enrol-token")
        token = ca.inner_text("#enrol-token").strip()
        assert token and f"--token {token}" in ca.inner_text("#node-commands")
        if i == 0:
            pages.check(ca, "admin", "enrolment-token", revisit=False)   # shown once
        cfg = write_node_config(tmp_path / "hospitals" / f"node{i}" / "node.toml", base_url=base,
                                csv=data.hospital_csvs[name], max_epsilon=5.0, auto_approve=(i != 0), poll_wait_s=5)
        stack.enrol_node(cfg, token)
        nodes.append(stack.start_node(f"n{i}", cfg))
    ca.click("header >> text=Hospitals")
    _reload_until(ca, ".badge.node-online", 60, count=2)   # the nodes' heartbeats
    pages.check(ca, "admin", "hospitals")
    ca.click("a:has-text('Alpha Hospital')")
    ca.wait_for_selector("h1:has-text('Alpha Hospital')")
    pages.check(ca, "admin", "hospital")

    # --- invitations by e-mail; each person sets a password with the one-time link
    people = [("Rita Researcher", "rita@example.org", "researcher", None),
              ("Hal Hospital", "hal@example.org", "hospital_admin", "Alpha Hospital"),
              ("Aude Auditor", "aude@example.org", "auditor", None)]
    ca.click("header >> text=People")
    pages.check(ca, "admin", "people-alone", revisit=False)
    for full, email, role, hospital in people:
        ca.fill("#id_full_name", full)
        ca.fill("#id_email", email)
        ca.select_option("#id_role", role)
        if hospital:
            ca.select_option("#id_hospital", label=hospital)
        ca.click("#invite button[type=submit]")   # not a pending row's "Send invitation again"
        ca.wait_for_selector(f"text=Invitation sent to {email}")
    pages.check(ca, "admin", "people")
    role_pages = {}
    for full, email, role, _ in people:
        p = pages.context(role, accept_downloads=True)
        p.goto(_mailed_link(web_log, email))
        p.wait_for_selector("h1:has-text('Set your password')")
        assert p.locator(f"text={full}").count() >= 1
        if role == "researcher":
            pages.check(p, role, "set-password", revisit=False)   # the link works once
        p.fill("#id_password1", PASSWORD)
        p.fill("#id_password2", PASSWORD)
        p.click("button:has-text('Set password')")
        p.wait_for_selector("text=Password set for")
        assert p.input_value("input[name=username]") == email
        if role == "researcher":
            pages.check(p, role, "login")
            p.fill("input[name=password]", "not-the-password")
            p.click("button[type=submit]")
            p.wait_for_selector("text=Wrong username or password")
            pages.check(p, role, "login-failed", revisit=False)
        p.fill("input[name=password]", PASSWORD)
        p.click("button[type=submit]")
        p.wait_for_url(f"{base}/")
        role_pages[role] = p

    # --- researcher: dashboard, the new-study form with its privacy preview
    page = role_pages["researcher"]
    page.wait_for_selector(".badge.node-online")
    pages.check(page, "researcher", "dashboard-empty", revisit=False)
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
    for name in names:
        page.check(f"label:has-text('{name}') >> input[name=hospitals]")
    _wait_js(page, "(() => { const t = document.querySelector('#privacy-preview').textContent;"
                   " return t.includes('ε = 1.0 (chosen)') && t.includes('2 rounds') && t.includes('2000'); })()")
    pages.check(page, "researcher", "new-study-form")
    page.click("button:has-text('Create draft study')")
    page.wait_for_url(re.compile(r".*/studies/\d+/.*"))
    study = Study.objects.get(name="Breast cancer pilot")
    assert study.status == Study.Status.DRAFT and study.owner.username == "rita@example.org"
    assert page.locator("text=Before you start").is_visible()
    pages.check(page, "researcher", "study-draft", revisit=False)
    # --- edit the draft: the form comes back filled in; saving keeps it a draft
    page.click("#edit-btn")
    page.wait_for_selector("#save-draft")
    assert page.input_value("#id_name") == "Breast cancer pilot" and page.input_value("#id_rounds") == "2"
    page.fill("#id_purpose", "Predict malignancy from FNA features without pooling data (edited).")
    pages.check(page, "researcher", "edit-draft", revisit=False)
    page.click("#save-draft")
    page.wait_for_selector("text=Draft saved")
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT and study.purpose.endswith("(edited).") and study.rounds == 2
    _click_and_confirm(page, "#start-btn", "Start recruitment for Breast cancer pilot?")
    page.wait_for_selector("text=Recruitment opened")
    assert Study.objects.get(pk=study.pk).status == Study.Status.RECRUITING

    # --- the hospital admin approves in the inbox
    hp = role_pages["hospital_admin"]
    hp.reload()
    assert hp.locator("text=1 invitation waiting").is_visible()
    pages.check(hp, "hospital_admin", "dashboard", revisit=False)
    hp.click("header >> text=Inbox")
    pages.check(hp, "hospital_admin", "inbox", revisit=False)
    hp.click("a:has-text('Review')")
    hp.wait_for_selector("#approve-btn")
    assert hp.locator("text=within the cap").is_visible()
    pages.check(hp, "hospital_admin", "invitation", revisit=False)
    # ... and decides on the phone: the inbox and the approve flow at 390 px, buttons on screen
    hp.set_viewport_size(PHONE)
    hp.click("header >> text=Inbox")
    pages.check(hp, "hospital_admin", "inbox", revisit=False)
    hp.click("a:has-text('Review')")
    hp.wait_for_selector("#approve-btn")
    pages.check(hp, "hospital_admin", "invitation", revisit=False)
    hp.locator("#approve-btn").scroll_into_view_if_needed()
    box = hp.locator("#approve-btn").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    hp.fill("#approve-note", "Approved by the data protection officer")
    _click_and_confirm(hp, "#approve-btn", "Approve study Breast cancer pilot for Alpha Hospital?")
    hp.wait_for_selector("text=Alpha Hospital approved study")
    assert Participation.objects.get(study=study, hospital__name="Alpha Hospital").state == "approved"
    pages.check(hp, "hospital_admin", "invitation-approved", revisit=False)
    hp.set_viewport_size(DESKTOP)
    hp.reload(wait_until="load")
    pages.check(hp, "hospital_admin", "invitation-approved")

    # --- the researcher follows it (the page polls and reloads itself on status changes)
    from playwright.sync_api import expect

    live = page.locator("#live")
    expect(live).to_have_attribute("data-status", re.compile("running|completed|failed|cancelled"), timeout=120_000)
    if live.get_attribute("data-status") == "running":
        page.locator("ol.rounds li").first.wait_for()
        page.screenshot(path=str(shots / "1280x800" / "study-running.png"), full_page=True)
    expect(live).to_have_attribute("data-status", re.compile("completed|failed|cancelled"), timeout=300_000)
    study.refresh_from_db()
    assert study.status == Study.Status.COMPLETED, f"{study.status}: {study.status_reason}\n{procs_tail()}"
    page.goto(f"{base}/studies/{study.pk}/", wait_until="load")
    _reload_until(page, "#download-model", 60)   # the released model follows the status by a moment
    # Charts are real images that loaded (SVG from the server).
    for img in ("#chart-metrics", "#chart-privacy"):
        _wait_js(page, f"document.querySelector('{img}').complete && "
                       f"document.querySelector('{img}').naturalWidth > 0")
    svg = page.request.get(f"{base}/studies/{study.pk}/charts/metrics.svg").text()
    assert "Alpha Hospital" in svg and "Beta Hospital" in svg and "AUC" in svg
    svg = page.request.get(f"{base}/studies/{study.pk}/charts/privacy.svg").text()
    assert "study budget" in svg
    assert page.locator("ol.rounds li.rs-done").count() == 2
    pages.check(page, "researcher", "study-completed")
    page.click("header >> text=Dashboard")
    pages.check(page, "researcher", "dashboard")
    page.goto(f"{base}/studies/{study.pk}/", wait_until="load")

    # --- download the model: the bytes are the released, attested model; the model card
    with page.expect_download() as dl_info:
        page.click("#download-model")
    digest = hashlib.sha256(Path(dl_info.value.path()).read_bytes()).hexdigest()
    assert digest == FinalModel.objects.get(study=study).sha256
    page.click("#model-card")
    page.wait_for_selector("text=Privacy guarantee")
    assert page.locator(f"text={digest}").count() >= 1
    assert page.locator("text=not shared").count() >= 1
    pages.check(page, "researcher", "model-card")
    page.goto(f"{base}/audit/studies/{study.pk}/report/", wait_until="load")
    page.wait_for_selector("text=Audit chain verified")
    assert page.evaluate("getComputedStyle(document.querySelector('h2')).borderBottomStyle") == "solid"
    pages.check(page, "researcher", "audit-report")
    page.goto(f"{base}/", wait_until="load")   # the audit report has no portal header: back to the portal
    page.click("header >> a:has-text('Rita Researcher')")
    page.wait_for_url(f"{base}/account/")
    pages.check(page, "researcher", "account")

    # --- the hospital admin (the DPO's questions): the hospital page, the study, the same model card
    hp.click("header >> text=Hospitals")
    hp.click("a:has-text('Alpha Hospital')")
    hp.wait_for_selector("h1:has-text('Alpha Hospital')")
    pages.check(hp, "hospital_admin", "hospital")
    hp.goto(f"{base}/studies/{study.pk}/", wait_until="load")
    pages.check(hp, "hospital_admin", "study-completed")
    hp.goto(f"{base}/studies/{study.pk}/model-card/", wait_until="load")
    assert hp.locator(f"text={digest}").count() >= 1 and hp.locator("text=Beta Hospital").count() >= 1
    pages.check(hp, "hospital_admin", "model-card")

    # --- auditor: the trail, an event, the report; the export verified with docs/audit.md's script
    au = role_pages["auditor"]
    pages.check(au, "auditor", "dashboard")
    au.click("header >> text=Audit trail")
    au.wait_for_selector("table")
    pages.check(au, "auditor", "trail")
    au.goto(f"{base}/audit/trail/?study={study.pk}", wait_until="load")
    pages.check(au, "auditor", "trail-study")
    au.locator("a[href*='/audit/events/']").first.click()
    au.wait_for_url(re.compile(r".*/audit/events/\d+/"))
    pages.check(au, "auditor", "event")
    au.goto(f"{base}/audit/studies/{study.pk}/report/", wait_until="load")
    au.wait_for_selector("text=Audit chain verified")
    pages.check(au, "auditor", "audit-report")
    head = au.locator("tr:has(th:has-text('Chain head hash')) td").inner_text().strip()
    au.goto(f"{base}/audit/trail/?study={study.pk}", wait_until="load")
    with au.expect_download() as dl_info:
        au.click("a:has-text('Export chain (JSONL)')")
    export = tmp_path / f"study-{study.pk}.jsonl"
    dl_info.value.save_as(export)
    script = tmp_path / "verify_chain.py"
    script.write_text(_verify_snippet())
    r = subprocess.run([sys.executable, str(script), str(export)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("OK:"), (r.stdout, r.stderr)
    # Reading the report and exporting are audited too, so the export runs on past the report's head:
    # the report's head is one of the export's links (docs/audit.md, step 3).
    hashes = [json.loads(line)["hash"] for line in export.read_text().splitlines()]
    assert head in hashes, (head, hashes[-3:])

    # --- the consortium admin's trail of the study, then every page again at phone width
    ca.goto(f"{base}/audit/trail/?study={study.pk}", wait_until="load")
    pages.check(ca, "admin", "trail-study")
    for role, p in [("admin", ca), ("researcher", page), ("hospital_admin", hp), ("auditor", au)]:
        pages.revisit(role, p, PHONE)

    assert not pages.problems, "\n".join(pages.problems)
    assert not pages.console_errors, (pages.console_errors, pages.bad_responses)
    assert pages.csp == []
    assert pages.html_policies and all(policy and "default-src 'self'" in policy
                                       for _, policy in pages.html_policies), pages.html_policies
    for n in nodes:
        assert n.alive(), n.tail()
    # Under Playwright's sync API (greenlets) this body's queries get a database connection other
    # than the fixtures' one, which nothing else closes: without this the test database stays open
    # at the end of the session and pytest-django cannot drop it (seen as a teardown warning).
    from django.db import connection

    connection.close()
