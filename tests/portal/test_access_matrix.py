"""One access matrix, every surface: the same expectations (role x study x action) are checked
against the portal pages, the researcher REST API and the audit report views, which all ask
studies.access.

Expected outcomes: "ok" (the surface's success: 200, or 302 for a portal form post), 403 (the user
sees the study but their role does not allow the action) or 404 (the study is invisible to them:
another consortium, a draft or an uninvited hospital for hospital admins).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction
from portal_support import make_study

from studies import services
from studies.models import FinalModel

pytestmark = pytest.mark.django_db

OK = "ok"
USERS = ["cadmin", "researcher", "auditor", "hadmin1", "hadmin2", "outsider", "hadmin3"]
#          North consortium (c1): admin, researcher, auditor, admins of Alpha (h1) and Beta (h2);
#          South consortium (c2): a researcher and the admin of Gamma (h3).

# Studies: s1 recruiting, invites Alpha (undecided), model released; draft invites Alpha;
# rel invites Alpha (approved) and Beta (declined), model released; s3 is the South consortium's.
EXPECTED = {
    "view": {
        "s1":    [OK, OK, OK, OK, 404, 404, 404],
        "draft": [OK, OK, OK, 404, 404, 404, 404],    # drafts are hidden from hospital admins
        "rel":   [OK, OK, OK, OK, OK, 404, 404],
        "s3":    [404, 404, 404, 404, 404, OK, OK],
    },
    "manage": {
        "s1":    [OK, OK, 403, 403, 404, 404, 404],
        "draft": [OK, OK, 403, 404, 404, 404, 404],
        "rel":   [OK, OK, 403, 403, 403, 404, 404],
        "s3":    [404, 404, 404, 404, 404, OK, 403],
    },
    "download_model": {
        "s1":    [OK, OK, OK, 403, 404, 404, 404],    # Alpha has not approved
        "rel":   [OK, OK, OK, OK, 403, 404, 404],     # Beta declined: no model
    },
    "report": {
        "s1":    [OK, OK, OK, 403, 404, 404, 404],
        "draft": [OK, OK, OK, 404, 404, 404, 404],
        "rel":   [OK, OK, OK, 403, 403, 404, 404],
        "s3":    [404, 404, 404, 404, 404, OK, 403],
    },
    "audit": {
        "s1":    [OK, 403, OK, 403, 404, 404, 404],
        "draft": [OK, 403, OK, 404, 404, 404, 404],
        "rel":   [OK, 403, OK, 403, 403, 404, 404],
        "s3":    [404, 404, 404, 404, 404, 403, 403],
    },
}

# action -> the surfaces that offer it: (name, method, URL template, success status)
SURFACES = {
    "view": [("portal", "get", "/studies/{id}/", 200), ("api", "get", "/api/studies/{id}/", 200)],
    "manage": [("portal", "post", "/studies/{id}/cancel/", 302), ("api", "post", "/api/studies/{id}/cancel", 200)],
    "download_model": [("portal", "get", "/studies/{id}/model/", 200), ("api", "get", "/api/studies/{id}/model", 200)],
    "report": [("reports", "get", "/audit/studies/{id}/report/", 200)],
    "audit": [("reports", "get", "/audit/studies/{id}/export.jsonl", 200),
              ("reports", "get", "/audit/trail/?study={id}", 200)],
}

@pytest.fixture
def mworld(world):
    """The portal world plus a study with a released model that Alpha approved and Beta declined."""
    w = world
    w.rel = make_study(w.c1, "Released joint", [w.h1, w.h2])
    services.participation_decide(participation=w.rel.participations.get(hospital=w.h1), decision="approve",
                                  actor="test")
    services.participation_decide(participation=w.rel.participations.get(hospital=w.h2), decision="decline",
                                  actor="test", reason="no capacity")
    d = Path(settings.MEDIA_ROOT) / "models"
    (d / "rel_test.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    FinalModel.objects.create(study=w.rel, path="models/rel_test.safetensors", sha256="b" * 64, size_bytes=16,
                              uploaded_by=w.h1, round_number=2)
    return w


def _status(client, user, method: str, url: str) -> int:
    """One request as ``user``, rolled back afterwards so a state change (cancel, an audited
    download) does not change what the next user gets."""
    with transaction.atomic():
        client.force_login(user)
        resp = getattr(client, method)(url)
        if resp.streaming:
            b"".join(resp.streaming_content)  # reading it to the end closes the file
        client.logout()
        transaction.set_rollback(True)
    return resp.status_code


@pytest.mark.parametrize("action", list(EXPECTED))
def test_access_matrix(mworld, client, action):
    """Every user x study x surface of one action (one world per action: building it is the slow part)."""
    wrong = {}
    for study, row in EXPECTED[action].items():
        for surface, method, tmpl, success in SURFACES[action]:
            url = tmpl.format(id=getattr(mworld, study).pk)
            got = [_status(client, mworld.users[name], method, url) for name in USERS]
            want = [success if e == OK else e for e in row]
            wrong.update({(study, surface, url, name): (g, w) for name, g, w in zip(USERS, got, want) if g != w})
    assert not wrong, wrong


def test_lists_show_exactly_the_visible_studies(mworld, client):
    """The portal dashboard and the API list show the studies the "view" row allows, no others."""
    names = {key: getattr(mworld, key).name for key in EXPECTED["view"]}
    for i, user in enumerate(USERS):
        want = {names[key] for key, row in EXPECTED["view"].items() if row[i] == OK}
        client.force_login(mworld.users[user])
        listed = {s["name"] for s in client.get("/api/studies/").json()["studies"]}
        assert listed & set(names.values()) == want, user
        html = client.get("/").content.decode()
        assert {n for n in names.values() if n in html} == want, user
        client.logout()


def test_hospital_admin_sees_only_their_hospital_inside_a_study(mworld, client):
    client.force_login(mworld.users["hadmin2"])
    body = client.get(f"/api/studies/{mworld.rel.pk}/").json()
    assert [p["hospital"] for p in body["participants"]] == ["Beta Hospital"]
    # (the portal's study page filters the same way: test_access.test_lists_do_not_leak)
    client.force_login(mworld.users["researcher"])
    body = client.get(f"/api/studies/{mworld.rel.pk}/").json()
    assert sorted(p["hospital"] for p in body["participants"]) == ["Alpha Hospital", "Beta Hospital"]


@pytest.mark.parametrize("url,expected", [
    ("/audit/trail/", [OK, 403, OK, 403, 403, 403, 403]),
    ("/audit/trail/?consortium={c1}", [OK, 403, OK, 403, 403, 404, 404]),
    ("/audit/trail/?consortium={c2}", [404, 404, 404, 404, 404, 403, 403]),
])
def test_trail_matrix(mworld, client, url, expected):
    url = url.format(c1=mworld.c1.pk, c2=mworld.c2.pk)
    got = [_status(client, mworld.users[name], "get", url) for name in USERS]
    assert got == [200 if e == OK else e for e in expected], dict(zip(USERS, got))


def test_declined_hospital_gets_a_clear_refusal_from_the_api(mworld, client):
    client.force_login(mworld.users["hadmin2"])
    r = client.get(f"/api/studies/{mworld.rel.pk}/model")
    assert r.status_code == 403 and r.json()["code"] == "forbidden" and "approved" in r.json()["error"]
