"""People in the portal: invitations by e-mail, one-time password links, password reset, role
changes and removals (audited), display names, and the first-run page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from audit.models import AuditEvent
from consortia.models import Membership, PasswordLink

pytestmark = pytest.mark.django_db
Role = Membership.Role
NEW_PW = "a long and fresh passphrase 42"


def _link(message) -> str:
    return re.search(r"https?://[^/\s]+(/password/set/[^\s]+/)", message.body).group(1)


def _invite(client, world, **over):
    data = {"full_name": "Hana Kowalski", "email": "hana@north.example", "role": Role.RESEARCHER, "hospital": "",
            "consortium": world.c1.pk, **over}
    return client.post("/people/", data)


def test_an_invited_person_sets_a_password_once_and_signs_in(world, client):
    client.force_login(world.users["cadmin"])
    r = _invite(client, world)
    assert r.status_code == 302, r.content.decode()[:2000]
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["hana@north.example"]
    link = _link(mail.outbox[0])
    user = Membership.objects.get(consortium=world.c1, role=Role.RESEARCHER, user__email="hana@north.example").user
    assert not user.has_usable_password()
    # The people page shows her by name, marked invited; nothing of the token is stored in the clear.
    page = client.get("/people/").content.decode()
    assert "Hana Kowalski" in page and "invited" in page
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert not PasswordLink.objects.filter(token_hash=token).exists()
    assert PasswordLink.objects.get(user=user).token_hash != token
    client.logout()
    # The link moves the browser to an address without the secret, which asks for the password.
    r = client.get(link)
    assert r.status_code == 302 and r["Location"] == "/password/set/"
    assert "Hana Kowalski" in client.get("/password/set/").content.decode()
    # A weak password is refused with the validators' reasons; the link still works after that.
    weak = client.post("/password/set/", {"password1": "password", "password2": "password"})
    assert weak.status_code == 422 and "too common" in weak.content.decode()
    ok = client.post("/password/set/", {"password1": NEW_PW, "password2": NEW_PW})
    assert ok.status_code == 302 and ok["Location"].startswith("/login/")
    assert client.login(username="hana@north.example", password=NEW_PW)
    client.logout()
    # Used once: a second visit says the link no longer works and offers a new one.
    client.get(link)
    gone = client.get("/password/set/")
    assert gone.status_code == 410 and "no longer works" in gone.content.decode()
    actions = list(AuditEvent.objects.filter(consortium_id=world.c1.pk).values_list("action", flat=True))
    assert "person.invited" in actions and "membership.granted" in actions and "auth.password_set" in actions


def test_an_expired_link_does_not_work(world, client):
    client.force_login(world.users["cadmin"])
    _invite(client, world)
    PasswordLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    client.logout()
    client.get(_link(mail.outbox[0]))
    assert client.post("/password/set/", {"password1": NEW_PW, "password2": NEW_PW}).status_code == 410


def test_resending_an_invitation_replaces_the_old_link(world, client):
    client.force_login(world.users["cadmin"])
    _invite(client, world)
    m = Membership.objects.get(user__email="hana@north.example")
    assert client.post(f"/people/{m.pk}/resend/").status_code == 302
    assert len(mail.outbox) == 2
    client.logout()
    client.get(_link(mail.outbox[0]))
    assert client.post("/password/set/", {"password1": NEW_PW, "password2": NEW_PW}).status_code == 410
    client.get(_link(mail.outbox[1]))
    assert client.post("/password/set/", {"password1": NEW_PW, "password2": NEW_PW}).status_code == 302


def test_inviting_someone_who_has_an_account_grants_the_role_without_a_link(world, client):
    world.users["outsider"].email = "out@south.example"
    world.users["outsider"].save()
    client.force_login(world.users["cadmin"])
    r = _invite(client, world, email="OUT@south.example", full_name="Otto", role=Role.AUDITOR)
    assert r.status_code == 302
    assert Membership.objects.filter(user=world.users["outsider"], consortium=world.c1, role=Role.AUDITOR).exists()
    assert "/password/set/" not in mail.outbox[0].body and "/login/" in mail.outbox[0].body
    assert _invite(client, world, email="out@south.example", role=Role.AUDITOR).status_code == 422  # already has it


def test_invitation_form_checks_roles_and_hospitals(world, client):
    client.force_login(world.users["cadmin"])
    r = _invite(client, world, role=Role.HOSPITAL_ADMIN)
    assert r.status_code == 422 and "choose the hospital" in r.content.decode()
    r = _invite(client, world, role=Role.HOSPITAL_ADMIN, hospital=world.h3.pk)   # another consortium's hospital
    assert r.status_code == 422 and not Membership.objects.filter(hospital=world.h3, user__email="hana@north.example")
    r = _invite(client, world, email="not an address")
    assert r.status_code == 422 and not mail.outbox


def test_only_a_consortium_admin_manages_people_of_their_consortium(world, client):
    m = Membership.objects.get(user=world.users["researcher"])
    for name, status in [("researcher", 403), ("auditor", 403), ("hadmin1", 403), ("outsider", 404)]:
        client.force_login(world.users[name])
        assert client.post(f"/people/{m.pk}/remove/").status_code == status, name
        assert client.post(f"/people/{m.pk}/role/", {f"m{m.pk}-role": Role.CONSORTIUM_ADMIN}).status_code == status
    assert Membership.objects.filter(pk=m.pk, role=Role.RESEARCHER).exists()
    client.force_login(world.users["researcher"])
    assert client.get("/people/").status_code == 403
    assert client.post("/people/", {"full_name": "x", "email": "x@y.z", "role": "auditor"}).status_code == 403
    client.force_login(world.users["outsider"])
    assert client.get(f"/people/?consortium={world.c1.pk}").status_code == 403  # admins of nothing: no page at all


def test_role_changes_and_removals_are_audited_and_the_last_admin_stays(world, client):
    client.force_login(world.users["cadmin"])
    m = Membership.objects.get(user=world.users["researcher"])
    r = client.post(f"/people/{m.pk}/role/", {f"m{m.pk}-role": Role.HOSPITAL_ADMIN, f"m{m.pk}-hospital": world.h2.pk})
    assert r.status_code == 302
    m.refresh_from_db()
    assert m.role == Role.HOSPITAL_ADMIN and m.hospital_id == world.h2.pk
    ev = AuditEvent.objects.get(action="membership.changed", object_id=str(m.pk))
    assert ev.data["before"]["role"] == Role.RESEARCHER and ev.data["role"] == Role.HOSPITAL_ADMIN
    assert ev.actor == f"user:{world.users['cadmin'].pk}:cadmin"
    assert client.post(f"/people/{m.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=m.pk).exists()
    assert AuditEvent.objects.filter(action="membership.revoked", object_id=str(m.pk)).count() == 1
    # The consortium's only admin can neither be removed nor demoted.
    own = Membership.objects.get(user=world.users["cadmin"])
    client.post(f"/people/{own.pk}/remove/")
    client.post(f"/people/{own.pk}/role/", {f"m{own.pk}-role": Role.AUDITOR})
    own.refresh_from_db()
    assert own.role == Role.CONSORTIUM_ADMIN
    assert "last admin" in client.get("/people/").content.decode()


def test_password_reset_sends_a_link_without_revealing_accounts(world, client):
    u = world.users["researcher"]
    u.email = "rita@north.example"
    u.save()
    unknown = client.post("/password/reset/", {"email": "nobody@north.example"}, follow=True)
    known = client.post("/password/reset/", {"email": "Rita@north.example"}, follow=True)
    assert unknown.status_code == known.status_code == 200
    say = "If an account has this address"
    assert say in unknown.content.decode() and say in known.content.decode()
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["rita@north.example"]
    client.post("/password/reset/", {"email": "rita@north.example"})   # moments later: no second e-mail
    assert len(mail.outbox) == 1
    client.get(_link(mail.outbox[0]))
    assert client.post("/password/set/", {"password1": NEW_PW, "password2": NEW_PW}).status_code == 302
    assert client.login(username="researcher", password=NEW_PW)
    assert AuditEvent.objects.filter(action="auth.password_reset_requested").count() == 1
    assert AuditEvent.objects.get(action="auth.password_set").data["through"] == "reset"
    assert NEW_PW not in str(list(AuditEvent.objects.values_list("data", flat=True)))


def test_people_are_shown_by_display_name(world, client):
    u = world.users["hadmin1"]
    u.first_name, u.last_name = "Hana", "Novak"
    u.save()
    from studies import services

    services.participation_decide(participation=world.p1, decision="approve", actor=f"user:{u.pk}:hadmin1", reason="")
    client.force_login(world.users["researcher"])
    html = client.get(f"/studies/{world.s1.pk}/").content.decode()
    assert "Hana Novak" in html and "user:" not in html
    client.force_login(u)
    assert "Hana Novak" in client.get("/").content.decode()   # the header names the person too


def test_first_run_page_creates_the_first_admin_then_closes(client, django_user_model, fast_hashing):
    assert 'href="/setup/"' in client.get("/login/").content.decode()   # a fresh install points to the first run
    data = {"consortium": "Nordic network", "description": "", "full_name": "Carla Admin", "email": "carla@nordic.example",
            "password1": NEW_PW, "password2": "different"}
    assert client.post("/setup/", data).status_code == 422
    data["password2"] = NEW_PW
    r = client.post("/setup/", data)
    assert r.status_code == 302 and r["Location"] == "/hospitals/"
    admin = django_user_model.objects.get(username="carla@nordic.example")
    assert Membership.objects.get(user=admin).role == Role.CONSORTIUM_ADMIN and not admin.is_superuser
    assert client.get("/hospitals/").status_code == 200            # signed in, on an empty install: no 403
    new_study = client.get("/studies/new/")
    assert new_study.status_code == 200 and "No hospital can be invited yet" in new_study.content.decode()
    assert "Getting started" in client.get("/").content.decode()
    client.logout()
    assert client.get("/setup/").status_code == 404
    assert client.post("/setup/", {**data, "consortium": "Another", "email": "eve@example.org"}).status_code == 404
    assert "/setup/" not in client.get("/login/").content.decode()
    assert AuditEvent.objects.filter(action="consortium.created", actor="setup").count() == 1


def test_first_run_asks_for_the_setup_code_when_one_is_set(client, settings, fast_hashing):
    settings.SETUP_CODE = "open-sesame-123"
    data = {"consortium": "Nordic network", "full_name": "Carla", "email": "carla@nordic.example",
            "password1": NEW_PW, "password2": NEW_PW, "code": "guess"}
    r = client.post("/setup/", data)
    assert r.status_code == 422 and "not the setup code" in r.content.decode()
    assert not Membership.objects.exists()
    assert client.post("/setup/", {**data, "code": "open-sesame-123"}).status_code == 302
