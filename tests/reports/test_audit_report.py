"""The study audit report for a study run end to end (real TenSEAL, Opacus numbers, WeasyPrint), and
who may read the report and the trail."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from audit_support import run_study_end_to_end
from django.contrib.auth import get_user_model
from django.test import Client

from audit.models import AuditHead
from consortia.services import consortium_create, membership_grant
from fedproto import PROTOCOL_VERSION, SOFTWARE_VERSION
from fedproto.codec import get_codec
from reports.report import PdfUnavailable, write_study_report


def user(name, consortium=None, role=None, hospital=None):
    u = get_user_model().objects.create_user(username=name)  # no password: force_login, no slow hashing
    if consortium is not None:
        membership_grant(user=u, consortium=consortium, role=role, hospital=hospital)
    c = Client()
    c.force_login(u)
    return c


def pdf_text(path) -> str:
    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext (poppler-utils) is needed to read the PDF report: apt-get install -y poppler-utils")
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


@pytest.mark.django_db(transaction=True)
def test_report_of_a_study_run_end_to_end(eager_celery, tmp_path, output_dir):
    w = run_study_end_to_end()
    study, hashes = w["study"], w["hashes"]
    paths = write_study_report(study=study, out_dir=output_dir / "audit-report")
    assert [p.name for p in paths] == ["report.html", "report.pdf"]
    html = paths[0].read_text()
    head = AuditHead.objects.get(stream=f"study:{study.pk}")
    # Purpose and configuration
    assert "Predict malignancy from six tumour features" in html
    assert "ε = 3, δ = 1e-05, clip norm 1, accountant RDP" in html
    # Participants with approvals: who and when, and the decline with its reason
    assert "admin-A" in html and "admin-D" in html and "user:" not in html and "no capacity this quarter" in html
    assert html.count('<span class="ok">approved</span>') == 3 and "key custodian" in html
    # Per-round participation: C refused round 2 for its budget
    assert "Hospital C: <span class=\"bad\">refused</span> (budget_exceeded)" in html
    assert "3 / 3" in html and "2 / 3" in html
    # Privacy spend against budget, recomputed
    assert "every reported epsilon recomputes" in html and "MISMATCH" not in html
    for needle in ("Noise mult.", "Clip norm", "Sampling rate", "Steps", "Opacus 1.6.0", "Budget ε",
                   "DP-SGD: fused step (checked against Opacus)"):
        assert needle in html
    # Encryption scheme, parameters, security level
    desc = get_codec("bfv-packed-v1").describe(study.encryption)
    assert desc["scheme"] in html and "128-bit" in html and str(desc["poly_modulus_degree"]) in html
    assert study.he_context.sha256 in html
    # Model hashes with attestations and the released model
    assert hashes[1] in html and hashes[2] in html and "Hospital A, Hospital B, Hospital C" in html
    assert study.final_model.sha256 == hashes[2] and "downloaded 1 time" in html
    # Refusals, rejections, failures
    assert "job.refused" in html and "update.rejected" in html and "needs exactly" in html
    # Software and chain
    assert f"{SOFTWARE_VERSION} (protocol version {PROTOCOL_VERSION})" in html and "node-test-1" in html
    assert "Audit chain verified" in html and head.hash in html
    # The PDF is the same document.
    pdf = paths[1].read_bytes()
    assert pdf.startswith(b"%PDF")
    text = pdf_text(paths[1])
    for needle in ("Study audit report", "Participants and approvals", "Privacy spend per hospital",
                   "Refusals, rejections and failures", "budget_exceeded", hashes[2][:32], head.hash[:32]):
        assert needle in text, needle
    # Served by the portal to the consortium's auditor, read-only.
    auditor = user("audrey", w["consortium"], "auditor")
    r = auditor.get(f"/audit/studies/{study.pk}/report/")
    assert r.status_code == 200 and head.hash in r.content.decode()
    r = auditor.get(f"/audit/studies/{study.pk}/report.pdf")
    assert r.status_code == 200 and r["Content-Type"] == "application/pdf" and r.content.startswith(b"%PDF")
    assert auditor.post(f"/audit/studies/{study.pk}/report/").status_code == 405
    r = auditor.get(f"/audit/studies/{study.pk}/export.jsonl")
    assert r.status_code == 200 and b"".join(r.streaming_content).count(b"\n") == head.seq


@pytest.mark.django_db
def test_report_and_trail_access(light_world):
    study, c = light_world["study"], light_world["consortium"]
    other = consortium_create(name="Another consortium")
    report, pdf, trail = (f"/audit/studies/{study.pk}/report/", f"/audit/studies/{study.pk}/report.pdf",
                          f"/audit/trail/?study={study.pk}")
    export = f"/audit/studies/{study.pk}/export.jsonl"
    # A study the user cannot see answers 404; one they see without the role answers 403 (studies.access).
    cases = {
        "auditor": (user("aud", c, "auditor"), 200, 200),
        "admin": (user("adm", c, "consortium_admin"), 200, 200),
        "researcher": (user("res", c, "researcher"), 200, 403),
        "hospital admin": (user("hadm", c, "hospital_admin", light_world["hospitals"][0]), 403, 403),
        "auditor elsewhere": (user("aud2", other, "auditor"), 404, 404),
        "no role": (user("nobody"), 404, 404),
    }
    for who, (client, report_status, trail_status) in cases.items():
        assert client.get(report).status_code == report_status, who
        assert client.get(trail).status_code == trail_status, who
        assert client.get(export).status_code == trail_status, who
    assert cases["researcher"][0].get(pdf).status_code == 200
    assert cases["auditor elsewhere"][0].get(pdf).status_code == 404
    # Anonymous visitors are sent to log in.
    r = Client().get(report)
    assert r.status_code == 302 and "/login/" in r["Location"]
    # The trail is paginated and in chain order for one study.
    aud = cases["auditor"][0]
    from django.db import transaction

    from audit.services import audit_record

    with transaction.atomic():
        for i in range(60):
            audit_record(action="test.filler", study_id=study.pk, consortium_id=c.pk, data={"i": i})
    page1 = aud.get(trail).content.decode()
    assert f"study:{study.pk}#1<" in page1 and "Page 1 of 2" in page1 and "Chain verified" in page1
    page2 = aud.get(trail + "&page=2").content.decode()
    assert "Page 2 of 2" in page2 and f"study:{study.pk}#1<" not in page2
    # Without a study: the consortium's events (the other consortium's are not listed).
    all_events = aud.get("/audit/trail/").content.decode()
    assert "consortium.created" in all_events or "test.filler" in all_events
    assert aud.get(f"/audit/trail/?consortium={other.pk}").status_code == 404


@pytest.mark.django_db
def test_report_without_weasyprint_says_what_to_install(light_world, tmp_path, monkeypatch):
    """Where WeasyPrint cannot be imported, the HTML report is still written, a stale PDF is removed,
    and the portal answers 503 with the fix instead of a server error."""
    import sys

    study = light_world["study"]
    out = tmp_path / "reports"
    out.mkdir()
    (out / "report.pdf").write_bytes(b"%PDF stale from an earlier run")
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # `import weasyprint` now raises ImportError
    with pytest.raises(PdfUnavailable) as exc:
        write_study_report(study=study, out_dir=out)
    assert "libpango-1.0-0" in str(exc.value) and "make system-deps" in str(exc.value)
    html = (out / "report.html").read_text()
    assert "Study audit report" in html and study.name in html
    assert not (out / "report.pdf").exists()
    r = user("aud", light_world["consortium"], "auditor").get(f"/audit/studies/{study.pk}/report.pdf")
    assert r.status_code == 503 and "make system-deps" in r.content.decode()
