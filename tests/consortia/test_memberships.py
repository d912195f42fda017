"""A hospital-admin role is for a hospital of the same consortium only, whatever the code path,
and every grant, change and removal of a role is audited (Django admin included)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from consortia.models import Membership
from consortia.services import consortium_create, hospital_create, membership_grant

pytestmark = pytest.mark.django_db

Role = Membership.Role


@pytest.fixture
def two(django_user_model, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    c1, c2 = consortium_create(name="North"), consortium_create(name="South")
    h1, h2 = hospital_create(consortium=c1, name="Alpha"), hospital_create(consortium=c2, name="Gamma")
    user = django_user_model.objects.create_user(username="hana", password="x" * 20)
    root = django_user_model.objects.create_superuser(username="root", password="x" * 20)
    return {"c1": c1, "c2": c2, "h1": h1, "h2": h2, "user": user, "root": root}


def test_a_cross_consortium_hospital_admin_role_cannot_be_stored(two):
    with pytest.raises(ValidationError, match="another consortium"):
        membership_grant(user=two["user"], consortium=two["c1"], role=Role.HOSPITAL_ADMIN, hospital=two["h2"])
    m = Membership(user=two["user"], consortium=two["c1"], role=Role.HOSPITAL_ADMIN, hospital=two["h2"])
    with pytest.raises(ValidationError):
        m.full_clean()
    with pytest.raises(ValidationError):
        m.save()
    assert not Membership.objects.exists()
    assert not AuditEvent.objects.filter(action="membership.granted").exists()
    # Same consortium: fine.
    ok = membership_grant(user=two["user"], consortium=two["c1"], role=Role.HOSPITAL_ADMIN, hospital=two["h1"])
    ok.full_clean()
    # And an existing role cannot be moved to another consortium's hospital either.
    ok.hospital = two["h2"]
    with pytest.raises(ValidationError):
        ok.save()


def _admin(client, two):
    client.force_login(two["root"])
    return client


def test_django_admin_refuses_a_cross_consortium_grant_and_says_why(two, client):
    c = _admin(client, two)
    r = c.post("/admin/consortia/membership/add/", {"user": two["user"].pk, "consortium": two["c1"].pk,
                                                     "role": Role.HOSPITAL_ADMIN, "hospital": two["h2"].pk})
    assert r.status_code == 200 and b"belongs to another consortium" in r.content
    assert not Membership.objects.exists()


def test_django_admin_grants_changes_and_removals_are_audited(two, client):
    c = _admin(client, two)
    r = c.post("/admin/consortia/membership/add/", {"user": two["user"].pk, "consortium": two["c1"].pk,
                                                     "role": Role.HOSPITAL_ADMIN, "hospital": two["h1"].pk})
    assert r.status_code == 302, r.content
    m = Membership.objects.get()
    granted = AuditEvent.objects.get(action="membership.granted")
    assert granted.actor.endswith(":root") and granted.data["role"] == Role.HOSPITAL_ADMIN
    assert granted.hospital_id == two["h1"].pk
    r = c.post(f"/admin/consortia/membership/{m.pk}/change/", {"user": two["user"].pk, "consortium": two["c1"].pk,
                                                                "role": Role.RESEARCHER, "hospital": ""})
    assert r.status_code == 302, r.content
    changed = AuditEvent.objects.get(action="membership.changed")
    assert changed.data["role"] == Role.RESEARCHER and changed.data["before"]["role"] == Role.HOSPITAL_ADMIN
    r = c.post(f"/admin/consortia/membership/{m.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302
    assert not Membership.objects.exists()
    revoked = AuditEvent.objects.get(action="membership.revoked")
    assert revoked.data["role"] == Role.RESEARCHER and revoked.actor.endswith(":root")
    # The bulk "delete selected" action is audited too.
    m2 = membership_grant(user=two["user"], consortium=two["c2"], role=Role.AUDITOR)
    r = c.post("/admin/consortia/membership/", {"action": "delete_selected", "_selected_action": [m2.pk], "post": "yes"})
    assert r.status_code == 302
    assert AuditEvent.objects.filter(action="membership.revoked").count() == 2
