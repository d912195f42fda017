"""Role x page x own/other object: the exact status code each combination gets."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from studies.models import Participation, Study

pytestmark = pytest.mark.django_db

USERS = ["cadmin", "researcher", "auditor", "hadmin1", "hadmin2", "outsider", "hadmin3"]


def _url(w, tmpl: str) -> str:
    return tmpl.format(s1=w.s1.pk, s2=w.s2.pk, s3=w.s3.pk, both=w.both.pk, draft=w.draft.pk, h1=w.h1.pk, h3=w.h3.pk,
                       p1=w.p1.pk, p2=w.p2.pk, p3=w.p3.pk)


PREVIEW = "/studies/privacy-preview/?epsilon=1&delta=1e-5&batch_size=32&rounds=2&local_epochs=1&sizes=500"

# path -> expected status for each user in USERS order
GET_MATRIX = {
    "/":                              [200, 200, 200, 200, 200, 200, 200],
    "/hospitals/":                    [200, 200, 200, 200, 200, 200, 200],
    "/hospitals/{h1}/":               [200, 403, 200, 200, 404, 404, 404],   # auditors read it (privacy spend)
    "/hospitals/{h3}/":               [404, 404, 404, 404, 404, 403, 200],
    "/studies/new/":                  [200, 200, 403, 403, 403, 200, 403],
    PREVIEW:                          [200, 200, 403, 403, 403, 200, 403],
    "/studies/{s1}/":                 [200, 200, 200, 200, 404, 404, 404],
    "/studies/{s2}/":                 [200, 200, 200, 404, 200, 404, 404],
    "/studies/{both}/":               [200, 200, 200, 200, 200, 404, 404],
    "/studies/{draft}/":              [200, 200, 200, 404, 404, 404, 404],
    "/studies/{s3}/":                 [404, 404, 404, 404, 404, 200, 200],
    "/studies/{s1}/live/":            [200, 200, 200, 200, 404, 404, 404],
    "/studies/{s1}/charts/metrics.svg": [200, 200, 200, 200, 404, 404, 404],
    "/studies/{s1}/charts/privacy.svg": [200, 200, 200, 200, 404, 404, 404],
    "/studies/{s1}/model-card/":      [200, 200, 200, 200, 404, 404, 404],
    "/studies/{s1}/model/":           [200, 200, 200, 403, 404, 404, 404],   # hadmin1: invited, not approved
    "/studies/{s2}/model/":           [404, 404, 404, 404, 404, 404, 404],   # not released (or not visible)
    "/inbox/":                        [403, 403, 403, 200, 200, 403, 200],
    "/inbox/{p1}/":                   [403, 403, 403, 200, 404, 403, 404],
    "/inbox/{p3}/":                   [403, 403, 403, 404, 404, 403, 200],
}


@pytest.mark.parametrize("path", list(GET_MATRIX))
def test_get_matrix(world, client, path):
    got = []
    for name in USERS:
        client.force_login(world.users[name])
        got.append(client.get(_url(world, path)).status_code)
        client.logout()
    assert got == GET_MATRIX[path], dict(zip(USERS, got))


POST_MATRIX = {
    # state-changing endpoints; 302 = allowed (redirect after the service call)
    "/hospitals/{h1}/token/":         [302, 403, 403, 403, 404, 404, 404],   # redirect to the page showing it once
    "/hospitals/{h3}/revoke/":        [404, 404, 404, 404, 404, 403, 403],   # a hospital admin reads, never revokes
    "/studies/{s1}/pause/":           [302, 302, 403, 403, 404, 404, 404],   # allowed, but a recruiting study cannot pause
    "/studies/{s3}/cancel/":          [404, 404, 404, 404, 404, 302, 403],   # outsider owns the South consortium study
    "/inbox/{p3}/":                   [403, 403, 403, 404, 404, 403, 302],
}


@pytest.mark.parametrize("path", list(POST_MATRIX))
def test_post_matrix(world, client, path):
    got = []
    for name in USERS:
        client.force_login(world.users[name])
        got.append(client.post(_url(world, path), {"decision": "decline", "reason": "test"}).status_code)
        client.logout()
    assert got == POST_MATRIX[path], dict(zip(USERS, got))


def test_hospital_admin_reads_own_hospital_but_cannot_create_tokens(world, client):
    client.force_login(world.users["hadmin3"])
    assert client.get(f"/hospitals/{world.h3.pk}/").status_code == 200
    assert client.post(f"/hospitals/{world.h3.pk}/token/").status_code == 403
    assert not world.h3.enrolment_tokens.exists()


def test_anonymous_is_sent_to_login(world, client):
    for path in ["/", "/hospitals/", f"/studies/{world.s1.pk}/", "/inbox/", "/studies/new/",
                 f"/studies/{world.s1.pk}/model/"]:
        r = client.get(path)
        assert r.status_code == 302 and r["Location"].startswith("/login/?next="), path
    r = client.post(f"/studies/{world.s1.pk}/cancel/")
    assert r.status_code == 302 and r["Location"].startswith("/login/")
    assert Study.objects.get(pk=world.s1.pk).status == Study.Status.RECRUITING


def test_lists_do_not_leak(world, client):
    client.force_login(world.users["hadmin1"])
    html = client.get("/").content.decode()
    assert "Sepsis alpha" in html and "Joint study" in html
    for other in ["Stroke beta", "Draft alpha", "Gamma study", "South consortium", "Beta Hospital", "Gamma Hospital"]:
        assert other not in html, other
    html = client.get("/hospitals/").content.decode()
    assert "Alpha Hospital" in html and "Beta Hospital" not in html
    # Inside a shared study a hospital admin sees only their own hospital's participation.
    html = client.get(f"/studies/{world.both.pk}/").content.decode()
    assert "Alpha Hospital" in html and "Beta Hospital" not in html
    # The model card is the same for every viewer; before the release it has no per-hospital rows
    # (test_model_card.py: after it, every viewer reads every site's rows).
    html = client.get(f"/studies/{world.both.pk}/model-card/").content.decode()
    assert "Beta Hospital" not in html
    client.logout()
    client.force_login(world.users["outsider"])
    html = client.get("/").content.decode()
    for other in ["Sepsis alpha", "Stroke beta", "Joint study", "Alpha Hospital", "North consortium"]:
        assert other not in html, other
    assert "Gamma study" in html
    html = client.get("/studies/new/").content.decode()
    assert "Alpha Hospital" not in html and "Gamma Hospital" in html


def test_hospital_admin_approves_from_inbox(world, client):
    client.force_login(world.users["hadmin1"])
    html = client.get(f"/inbox/{world.p1.pk}/").content.decode()
    assert "Approve for Alpha Hospital" in html and "within the cap" in html
    r = client.post(f"/inbox/{world.p1.pk}/", {"decision": "approve", "reason": "ethics ok"})
    assert r.status_code == 302
    p = Participation.objects.get(pk=world.p1.pk)
    assert p.state == "approved" and p.decided_by == f"user:{world.users['hadmin1'].pk}:hadmin1"
    assert AuditEvent.objects.filter(action="participation.approved", study_id=world.s1.pk).exists()
    # now a participant: may download the released model
    assert client.get(f"/studies/{world.s1.pk}/model/").status_code == 200


def test_decline_needs_a_reason(world, client):
    client.force_login(world.users["hadmin1"])
    html = client.get(f"/inbox/{world.p1.pk}/").content.decode()
    assert 'id="decline-reason"' in html and "required" in html and "data-confirm" in html
    r = client.post(f"/inbox/{world.p1.pk}/", {"decision": "decline", "reason": ""}, follow=True)
    assert "Say why you decline" in r.content.decode()
    assert Participation.objects.get(pk=world.p1.pk).state == "invited"
    assert not AuditEvent.objects.filter(action="participation.declined", study_id=world.s1.pk).exists()
    client.post(f"/inbox/{world.p1.pk}/", {"decision": "decline", "reason": "no ethics approval yet"})
    p = Participation.objects.get(pk=world.p1.pk)
    assert p.state == "declined" and p.reason == "no ethics approval yet"
    ev = AuditEvent.objects.get(action="participation.declined", study_id=world.s1.pk)
    assert ev.data["reason"] == "no ethics approval yet"


def test_hospital_withdraws_its_approval(world, client):
    client.force_login(world.users["hadmin1"])
    client.post(f"/inbox/{world.p1.pk}/", {"decision": "approve"})
    html = client.get(f"/inbox/{world.p1.pk}/").content.decode()
    assert 'id="withdraw-form"' in html
    # A withdrawal needs a reason; an invitation that was never approved cannot be "withdrawn".
    r = client.post(f"/inbox/{world.p1.pk}/", {"decision": "withdraw"}, follow=True)
    assert "Say why you withdraw" in r.content.decode()
    assert Participation.objects.get(pk=world.p1.pk).state == "approved"
    r = client.post(f"/inbox/{world.p1.pk}/", {"decision": "withdraw", "reason": "data-sharing agreement ended"},
                    follow=True)
    p = Participation.objects.get(pk=world.p1.pk)
    assert p.state == "withdrawn" and p.reason == "data-sharing agreement ended"
    ev = AuditEvent.objects.get(action="participation.withdrawn", study_id=world.s1.pk)
    assert ev.data["was"] == "approved" and ev.data["reason"] == "data-sharing agreement ended"
    # It was the only approval: the study can no longer reach its quorum and fails saying why.
    s = Study.objects.get(pk=world.s1.pk)
    assert s.status == Study.Status.FAILED and "withdrawn" in s.status_reason
    # Withdrawing twice is refused with a sentence, not a 500.
    r = client.post(f"/inbox/{world.p1.pk}/", {"decision": "withdraw", "reason": "again"}, follow=True)
    assert r.status_code == 200 and "nothing left to withdraw" in r.content.decode()
    # Another hospital's admin cannot withdraw it.
    client.force_login(world.users["hadmin2"])
    assert client.post(f"/inbox/{world.p1.pk}/", {"decision": "withdraw", "reason": "x"}).status_code == 404


def test_model_download_is_audited(world, client):
    client.force_login(world.users["researcher"])
    r = client.get(f"/studies/{world.s1.pk}/model/")
    assert r.status_code == 200 and r["X-Model-SHA256"] == "a" * 64
    assert b"".join(r.streaming_content).startswith(b"\x08")
    ev = AuditEvent.objects.filter(action="model.downloaded", study_id=world.s1.pk).get()
    assert ev.actor == f"user:{world.users['researcher'].pk}:researcher"


def test_study_actions_for_managers(world, client):
    client.force_login(world.users["researcher"])
    r = client.post(f"/studies/{world.draft.pk}/start/")
    assert r.status_code == 302
    assert Study.objects.get(pk=world.draft.pk).status == Study.Status.RECRUITING
    # Cancelling needs a reason: without one nothing changes and the page says why.
    r = client.post(f"/studies/{world.draft.pk}/cancel/", {"reason": "  "}, follow=True)
    assert "Say why the study is cancelled" in r.content.decode()
    assert Study.objects.get(pk=world.draft.pk).status == Study.Status.RECRUITING
    r = client.post(f"/studies/{world.draft.pk}/cancel/", {"reason": "ethics approval withdrawn"})
    assert r.status_code == 302
    s = Study.objects.get(pk=world.draft.pk)
    assert s.status == Study.Status.CANCELLED and s.status_reason == "ethics approval withdrawn"
    assert AuditEvent.objects.filter(action="study.cancelled", study_id=world.draft.pk).exists()
    r = client.post(f"/studies/{world.draft.pk}/frobnicate/")
    assert r.status_code == 404
    # GET never changes state
    assert client.get(f"/studies/{world.s1.pk}/cancel/").status_code == 405


def test_enrolment_token_shown_once_with_commands(world, client):
    """POST-redirect-GET: the POST mints one token and redirects; the page shows it once; reloading
    it shows it no more and mints nothing; a direct GET of the URL is no blank 405."""
    import re

    client.force_login(world.users["cadmin"])
    r = client.post(f"/hospitals/{world.h1.pk}/token/")
    assert r.status_code == 302 and "reveal=" in r["Location"]
    assert world.h1.enrolment_tokens.count() == 1
    page = client.get(r["Location"])
    html = page.content.decode()
    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    tok = re.search(r'id="enrol-token">([^<]+)<', html).group(1)
    assert f"python -m hospital_node enrol --config node.toml --token {tok}" in html
    assert "python -m hospital_node run --config node.toml" in html
    assert "[limits]" in html and "credentials_file" in html
    again = client.get(r["Location"], follow=True)
    assert tok not in again.content.decode() and "shown once" in again.content.decode()
    assert world.h1.enrolment_tokens.count() == 1   # the reload minted nothing
    assert tok not in client.get(f"/hospitals/{world.h1.pk}/").content.decode()
    direct = client.get(f"/hospitals/{world.h1.pk}/token/", follow=True)
    assert direct.status_code == 200 and "Create an enrolment token" in direct.content.decode()
    # The session never holds the token in the clear.
    from django.contrib.sessions.models import Session

    assert not any(tok in str(s.get_decoded()) for s in Session.objects.all())


def test_unused_enrolment_tokens_are_listed_and_revoked(world, client):
    from consortia.services import enrolment_token_create, node_enrol

    client.force_login(world.users["cadmin"])
    t1, clear1 = enrolment_token_create(hospital=world.h1)
    t2, clear2 = enrolment_token_create(hospital=world.h1)
    html = client.get(f"/hospitals/{world.h1.pk}/").content.decode()
    assert "2 unused" in html and html.count("tok-unused") == 2
    r = client.post(f"/hospitals/{world.h1.pk}/tokens/{t1.pk}/revoke/")
    assert r.status_code == 302
    t1.refresh_from_db()
    assert t1.state == "revoked"
    import pytest as _pytest

    from consortia.services import EnrolmentError

    with _pytest.raises(EnrolmentError, match="revoked"):
        node_enrol(enrolment_token=clear1, public_key="A" * 43 + "=", node_version="t")
    # Another consortium's admin cannot revoke it (404), a hospital admin neither (403).
    client.force_login(world.users["outsider"])
    assert client.post(f"/hospitals/{world.h1.pk}/tokens/{t2.pk}/revoke/").status_code == 404
    t2.refresh_from_db()
    assert t2.state == "unused"
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(action="enrolment_token.revoked", object_id=str(t1.pk)).count() == 1


def test_django_admin_for_staff_consortium_admin(world, client):
    client.force_login(world.users["cadmin"])
    assert client.get("/admin/").status_code == 200
    client.force_login(world.users["researcher"])
    assert client.get("/admin/").status_code == 302
