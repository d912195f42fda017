"""The hospital page as a data-protection officer reads it: the hospital's privacy spend across all
the studies the viewer may see (per study and in total, with the composition stated), its admins
and its node's state; for the consortium's admins and auditors and the hospital's own admins only."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from studies.hospital_ledger import hospital_privacy_spend
from studies.models import PrivacySpend, Round, RoundReport, Study, TrainingJob

pytestmark = pytest.mark.django_db
USERS = ["cadmin", "researcher", "auditor", "hadmin1", "hadmin2", "outsider", "hadmin3"]


def _spend(study, hospital, number, epsilon, delta=1e-5):
    rnd, _ = Round.objects.get_or_create(study=study, number=number, attempt=1, defaults={"status": Round.Status.DONE})
    job = TrainingJob.objects.create(round=rnd, hospital=hospital, status=TrainingJob.Status.UPLOADED)
    return PrivacySpend.objects.create(job=job, epsilon=epsilon, epsilon_round=None, delta=delta, noise_multiplier=1.1,
                                       sample_rate=0.01, steps=10, clip_norm=1.0, accountant="rdp",
                                       accountant_version="1")


@pytest.fixture
def spent(world):
    w = world
    _spend(w.s1, w.h1, 1, 0.4)
    _spend(w.s1, w.h1, 2, 0.7)                       # cumulative: 0.7 in s1
    _spend(w.both, w.h1, 1, 0.5)
    rnd = Round.objects.get(study=w.both, number=1)
    # The final report includes the local-only baseline's cost: 0.9 in "both".
    RoundReport.objects.create(round=rnd, hospital=w.h1, metrics={"auc": 0.8}, n_test=40, model_sha256="b" * 64,
                               epsilon_spent=0.85, local_only={"epsilon": 0.9, "metrics": {"auc": 0.7}})
    _spend(w.both, w.h2, 1, 5.0)                     # Beta's: never on Alpha's page
    Study.objects.filter(pk=w.both.pk).update(privacy_mode="distributed", collusion=1)
    w.h1.token_hash, w.h1.enrolled_at, w.h1.last_heartbeat = "x" * 64, timezone.now(), timezone.now()
    w.h1.save()
    u = w.users["hadmin1"]
    u.first_name, u.last_name = "Hana", "Ito"
    u.save()
    return w


def test_who_opens_a_hospitals_page(spent, client):
    w = spent
    got = {}
    for name in USERS:
        client.force_login(w.users[name])
        got[name] = (client.get(f"/hospitals/{w.h1.pk}/").status_code, client.get(f"/hospitals/{w.h3.pk}/").status_code)
        client.logout()
    # Alpha (North): its consortium's admins and auditors and its own admins; researchers 403; the
    # other hospital's admin and the other consortium 404 (existence not revealed).
    assert got == {"cadmin": (200, 404), "researcher": (403, 404), "auditor": (200, 404), "hadmin1": (200, 404),
                   "hadmin2": (404, 404), "outsider": (404, 403), "hadmin3": (404, 200)}


def test_an_auditor_reads_the_page_but_changes_nothing(spent, client):
    w = spent
    client.force_login(w.users["auditor"])
    for path in ("token/", "revoke/", "limits/"):
        assert client.post(f"/hospitals/{w.h1.pk}/{path}", {"max_epsilon": "9"}).status_code == 403, path
    w.h1.refresh_from_db()
    assert w.h1.revoked_at is None and w.h1.max_epsilon == 2.0 and not w.h1.enrolment_tokens.exists()
    html = client.get(f"/hospitals/{w.h1.pk}/").content.decode()
    assert "Create enrolment token" not in html and 'id="limits-form"' not in html
    # The hospitals list links only to the pages that open.
    assert f'href="/hospitals/{w.h1.pk}/"' in client.get("/hospitals/").content.decode()
    client.force_login(w.users["researcher"])
    listing = client.get("/hospitals/").content.decode()
    assert "Alpha Hospital" in listing and f'href="/hospitals/{w.h1.pk}/"' not in listing


def _rows(html: str) -> dict[str, str]:
    body = html.split('id="privacy-spend-table"', 1)[1].split("</table>", 1)[0]
    return {re.search(r">([^<]+)</a></th>", tr).group(1): tr
            for tr in re.findall(r"<tr>.*?</tr>", body, re.S) if "</a></th>" in tr}


def test_privacy_spend_per_study_and_total(spent, client):
    w = spent
    client.force_login(w.users["auditor"])
    html = client.get(f"/hospitals/{w.h1.pk}/").content.decode()
    rows = _rows(html)
    assert set(rows) == {"Sepsis alpha", "Joint study", "Draft alpha"}     # an auditor sees the draft too
    assert "0.700" in rows["Sepsis alpha"] and "local" in rows["Sepsis alpha"]
    assert "1e-05" in rows["Sepsis alpha"] and "recruiting" in rows["Sepsis alpha"]
    # Budget 1.0 of the study, below Alpha's cap 2.0: 70 % used.
    assert "70.0 %" in rows["Sepsis alpha"]
    assert "0.900" in rows["Joint study"] and "distributed" in rows["Joint study"] and "≤ 1 hospital" in rows["Joint study"]
    assert "5.000" not in html                                          # Beta's spend is not Alpha's
    assert "none reported" in rows["Draft alpha"]
    total = html.split('id="privacy-total"', 1)[1].split("</tr>", 1)[0]
    assert "ε 1.600" in total and "δ 2e-05" in total and "2 studies" in total
    note = html.split('id="composition-note"', 1)[1].split("</p>", 1)[0]
    assert "basic sequential composition" in note and "ε 0.900" in note and "parallel composition" in note
    # Admins by display name, node state.
    assert "Hana Ito" in html.split('id="hospital-admins"', 1)[1].split("</dd>", 1)[0]
    assert "hadmin1" not in html
    assert "online (in contact within the last" in html


def test_the_hospitals_own_admin_sees_no_drafts_and_a_revoked_node(spent, client):
    w = spent
    w.h1.revoked_at = timezone.now()
    w.h1.save()
    client.force_login(w.users["hadmin1"])
    html = client.get(f"/hospitals/{w.h1.pk}/").content.decode()
    assert set(_rows(html)) == {"Sepsis alpha", "Joint study"}
    assert "ε 1.600" in html and "revoked: its token no longer works" in html


def test_the_selector_takes_the_largest_cumulative_report_and_only_the_given_studies(spent):
    w = spent
    out = hospital_privacy_spend(w.h1, Study.objects.filter(pk=w.s1.pk))
    assert [r["study"].pk for r in out["rows"]] == [w.s1.pk]
    assert out["total_epsilon"] == pytest.approx(0.7) and out["n_spending"] == 1
    w.h1.max_epsilon = 0.5                          # a cap below the study's budget is the budget in effect
    out = hospital_privacy_spend(w.h1, Study.objects.all())
    both = next(r for r in out["rows"] if r["study"].pk == w.both.pk)
    assert both["epsilon_cap"] == 0.5 and both["used_pct"] == 180.0
    assert out["total_epsilon"] == pytest.approx(1.6) and out["max_epsilon"] == pytest.approx(0.9)
