"""Personal API tokens (shown once, hashed, audited, acting with the user's current roles),
hospital limits declared in the portal and checked before a study is created, results export."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from portal_support import SCHEMA

from audit.models import AuditEvent
from consortia.models import ApiToken, Hospital, Membership
from studies.models import Round, RoundReport, Study

pytestmark = pytest.mark.django_db
Role = Membership.Role


def _create_token(client, name="notebook") -> str:
    r = client.post("/account/", {"name": name, "expires": "30"})
    assert r.status_code == 302, r.content.decode()[:1500]
    page = client.get(r["Location"])
    assert page["Cache-Control"] == "no-store"
    return re.search(r'id="api-token">([^<]+)<', page.content.decode()).group(1), r["Location"]


def test_api_token_is_shown_once_stored_hashed_and_works_with_the_users_roles(world, client):
    client.force_login(world.users["researcher"])
    clear, shown_at = _create_token(client)
    assert clear.startswith("fpt_")
    assert clear not in client.get(shown_at).content.decode()            # reload: not shown again
    tok = ApiToken.objects.get(user=world.users["researcher"])
    assert tok.token_hash != clear and clear not in str(ApiToken.objects.values_list())
    assert AuditEvent.objects.filter(action="api_token.created", object_id=str(tok.pk)).count() == 1
    assert "OpenAPI schema" in client.get("/account/").content.decode()
    client.logout()
    api = client.get("/api/studies/", HTTP_AUTHORIZATION=f"Bearer {clear}")
    assert api.status_code == 200
    names = {s["name"] for s in api.json()["studies"]}
    assert "Sepsis alpha" in names and "Gamma study" not in names   # the user's consortium only
    # The token acts with the roles the user has now: removed from the consortium, it sees nothing.
    Membership.objects.filter(user=world.users["researcher"]).delete()
    assert client.get("/api/studies/", HTTP_AUTHORIZATION=f"Bearer {clear}").json()["studies"] == []
    # Writes by token need no CSRF token (it is not a cookie) but still the user's roles.
    r = client.post(f"/api/studies/{world.s1.pk}/cancel", HTTP_AUTHORIZATION=f"Bearer {clear}")
    assert r.status_code == 404


def test_revoked_expired_or_forged_tokens_get_401(world, client):
    client.force_login(world.users["researcher"])
    clear, _ = _create_token(client)
    tok = ApiToken.objects.get(user=world.users["researcher"])
    client.force_login(world.users["auditor"])
    assert client.post(f"/account/tokens/{tok.pk}/revoke/").status_code == 404   # not theirs
    client.force_login(world.users["researcher"])
    assert client.post(f"/account/tokens/{tok.pk}/revoke/").status_code == 302
    client.logout()
    for header in (f"Bearer {clear}", "Bearer fpt_forged", "Bearer", f"Bearer {clear} extra"):
        r = client.get("/api/studies/", HTTP_AUTHORIZATION=header)
        assert r.status_code == 401 and r.json()["code"], header
    assert AuditEvent.objects.filter(action="api_token.revoked", object_id=str(tok.pk)).count() == 1


def test_declared_limits_are_edited_by_admins_audited_and_shown(world, client):
    url = f"/hospitals/{world.h1.pk}/limits/"
    data = {"max_epsilon": "1.5", "max_rounds": "20", "allowed_models": ["logistic_regression", "mlp_classifier"]}
    client.force_login(world.users["hadmin2"])                      # another hospital's admin
    assert client.post(url, data).status_code == 404
    client.force_login(world.users["researcher"])
    assert client.post(url, data).status_code == 403
    client.force_login(world.users["hadmin1"])                      # this hospital's admin
    assert client.post(url, data).status_code == 302
    h = Hospital.objects.get(pk=world.h1.pk)
    assert (h.max_epsilon, h.max_rounds, h.allowed_models) == (1.5, 20, ["logistic_regression", "mlp_classifier"])
    ev = AuditEvent.objects.get(action="hospital.limits_changed", hospital_id=h.pk)
    assert ev.data["before"]["max_epsilon"] == 2.0 and ev.data["after"]["max_rounds"] == 20
    bad = client.post(url, {"max_epsilon": "-1", "max_rounds": "0"})
    assert bad.status_code == 422
    # The node's own limits, once it reports them, are shown next to the declared ones, with the difference.
    Hospital.objects.filter(pk=h.pk).update(token_hash="x", node_status={"limits": {
        "max_epsilon": 1.0, "max_delta": 1e-5, "max_rounds": 20, "allowed_models": ["logistic_regression"],
        "auto_approve": False}})
    html = client.get(f"/hospitals/{h.pk}/").content.decode()
    assert "The node enforces other limits than declared here" in html and "1.5 declared here, 1 on the node" in html
    client.force_login(world.users["researcher"])
    assert "max ε 1" in client.get("/hospitals/").content.decode()


def _study_form(world, **over):
    return {"consortium": world.c1.pk, "name": "Limits check", "purpose": "", "schema_text": json.dumps(SCHEMA),
            "task": "binary_classification", "label_column": "", "model_type": "logistic_regression", "hidden": "16",
            "rounds": "3", "local_epochs": "1", "batch_size": "32", "learning_rate": "0.1", "epsilon": "1.0",
            "delta": "1e-5", "clip_norm": "1.0", "encryption_preset": "bfv-standard", "quorum": "1",
            "round_deadline_s": "600", "hospitals": [world.h1.pk], "dataset_sizes": "200", **over}


def test_the_new_study_form_refuses_what_a_hospital_would_refuse(world, client):
    client.force_login(world.users["researcher"])
    page = client.get("/studies/new/").content.decode()
    assert "Alpha Hospital — max ε 2" in page                      # limits shown where hospitals are chosen
    r = client.post("/studies/new/", _study_form(world, epsilon="3.0"))
    assert r.status_code == 422
    assert "Alpha Hospital: ε 3 is above its max ε 2 (declared)" in r.content.decode()
    r = client.post("/studies/new/", _study_form(world, model_type="mlp_classifier"))
    assert r.status_code == 422 and "model mlp_classifier is not among its allowed models" in r.content.decode()
    Hospital.objects.filter(pk=world.h1.pk).update(node_status={"limits": {"max_rounds": 2}})
    r = client.post("/studies/new/", _study_form(world))
    assert r.status_code == 422 and "3 rounds is above its max 2 (on its node)" in r.content.decode()
    assert not Study.objects.filter(name="Limits check").exists()
    assert client.post("/studies/new/", _study_form(world, rounds="2")).status_code == 302
    # The API checks the same.
    body = {"consortium_id": world.c1.pk, "name": "API limits", "hospital_ids": [world.h1.pk], "schema": SCHEMA,
            "model": {"type": "logistic_regression"}, "rounds": 2, "local_epochs": 1, "batch_size": 16,
            "learning_rate": 0.1, "privacy": {"epsilon": 5.0, "delta": 1e-5, "clip_norm": 1.0}, "quorum": 1}
    r = client.post("/api/studies/", body, content_type="application/json")
    assert r.status_code == 422 and r.json()["code"] == "exceeds_hospital_limits"


def test_results_export_as_csv_and_json_for_what_the_viewer_sees(world, client):
    r1 = Round.objects.create(study=world.both, number=1)
    RoundReport.objects.create(round=r1, hospital=world.h1, metrics={"auc": 0.81, "accuracy": 0.75}, n_test=40,
                               model_sha256="b" * 64, epsilon_spent=0.4)
    RoundReport.objects.create(round=r1, hospital=world.h2, metrics={"auc": 0.79}, n_test=30, model_sha256="b" * 64,
                               epsilon_spent=0.4)
    Hospital.objects.filter(pk=world.h2.pk).update(name="=HYPERLINK(\"x\")")   # a formula in a spreadsheet cell
    client.force_login(world.users["researcher"])
    r = client.get(f"/studies/{world.both.pk}/results.csv")
    assert r["Content-Type"].startswith("text/csv") and "attachment" in r["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode())))
    assert [(x["hospital"], x["metric.auc"]) for x in rows] == [("'=HYPERLINK(\"x\")", "0.79"), ("Alpha Hospital", "0.81")]
    data = client.get(f"/studies/{world.both.pk}/results.json").json()
    assert data["columns"][:5] == ["round", "attempt", "hospital", "n_test", "epsilon_spent"] and len(data["rows"]) == 2
    assert client.get(f"/api/studies/{world.both.pk}/results").json()["rows"] == data["rows"]
    # A hospital admin gets their own hospital's rows only; another consortium gets 404.
    client.force_login(world.users["hadmin1"])
    assert [x["hospital"] for x in client.get(f"/studies/{world.both.pk}/results.json").json()["rows"]] == ["Alpha Hospital"]
    client.force_login(world.users["outsider"])
    assert client.get(f"/studies/{world.both.pk}/results.csv").status_code == 404
