"""Drafts are edited and any study cloned into a new draft, through the same form and checks as
a new study; both audited; the access policy decides who may (another consortium: 404)."""

from __future__ import annotations

import re

import pytest
from test_forms import form_data

from audit.models import AuditEvent
from studies import services
from studies.models import Study

pytestmark = pytest.mark.django_db


def test_edit_page_is_filled_in_with_the_draft(world, client):
    client.force_login(world.users["researcher"])
    html = client.get(f"/studies/{world.draft.pk}/edit/").content.decode()
    assert "Edit draft" in html and 'value="Draft alpha"' in html and 'id="save-draft"' in html
    checked = set(re.findall(r'name="hospitals" value="(\d+)"[^>]*checked', html))
    assert checked == {str(world.h1.pk)}, checked
    assert '<option value="bfv-compact" selected>' in html   # the draft's codec bfv-packed-v1


def test_editing_a_draft_replaces_its_definition_and_is_audited(world, client):
    client.force_login(world.users["researcher"])
    r = client.post(f"/studies/{world.draft.pk}/edit/",
                    form_data(world, name="Draft alpha v2", rounds=4, epsilon=1.5, hospitals=[world.h2.pk], quorum=1,
                              holdout="0.2"))
    assert r.status_code == 302 and r["Location"].startswith(f"/studies/{world.draft.pk}/"), r.content.decode()[:3000]
    s = Study.objects.get(pk=world.draft.pk)
    assert (s.name, s.rounds, s.epsilon, s.status, s.seed) == ("Draft alpha v2", 4, 1.5, "draft", world.draft.seed)
    assert s.evaluation["holdout"] == 0.2
    assert set(s.participations.values_list("hospital__name", flat=True)) == {"Beta Hospital"}
    ev = AuditEvent.objects.get(study_id=s.pk, action="study.edited")
    assert ev.actor.startswith(f"user:{world.users['researcher'].pk}:")
    assert {"rounds", "invited", "name"} <= set(ev.data["changed"])
    assert ev.data["before"]["invited"] == ["Alpha Hospital"] and ev.data["after"]["invited"] == ["Beta Hospital"]


def test_an_invalid_edit_says_what_to_fix_and_changes_nothing(world, client):
    client.force_login(world.users["researcher"])
    r = client.post(f"/studies/{world.draft.pk}/edit/", form_data(world, name="Sepsis alpha", hospitals=[world.h1.pk],
                                                                   quorum=1))
    assert r.status_code == 422 and "already exists" in r.content.decode()
    r = client.post(f"/studies/{world.draft.pk}/edit/", form_data(world, epsilon=4.0, hospitals=[world.h1.pk],
                                                                   quorum=1))
    assert r.status_code == 422 and "would refuse" in r.content.decode()
    assert Study.objects.get(pk=world.draft.pk).name == "Draft alpha"
    assert not AuditEvent.objects.filter(study_id=world.draft.pk, action="study.edited").exists()


def test_only_a_draft_can_be_edited(world, client):
    client.force_login(world.users["researcher"])
    for method in (client.get, client.post):
        r = method(f"/studies/{world.s1.pk}/edit/", form_data(world, name="Changed") if method == client.post else {})
        assert r.status_code == 302 and r["Location"] == f"/studies/{world.s1.pk}/"
    assert "only a draft can be edited" in client.get(f"/studies/{world.s1.pk}/").content.decode()
    assert Study.objects.get(pk=world.s1.pk).name == "Sepsis alpha"
    with pytest.raises(services.ServiceError) as e:
        services.study_update(study=world.s1, actor="test", **{
            "name": "X", "hospitals": [world.h1], "schema": world.s1.schema, "model_spec": world.s1.model_spec,
            "rounds": 2, "local_epochs": 1, "batch_size": 16, "learning_rate": 0.1,
            "privacy": {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}, "encryption": world.s1.encryption,
            "quorum": 1, "round_deadline_s": 60})
    assert e.value.code == "wrong_state"


def test_clone_fills_the_new_study_form_and_creates_a_new_draft(world, client):
    client.force_login(world.users["researcher"])
    html = client.get(f"/studies/{world.s1.pk}/clone/").content.decode()
    assert 'value="Copy of Sepsis alpha"' in html and 'id="clone-note"' in html
    assert f'name="cloned_from" value="{world.s1.pk}"' in html and 'action="/studies/new/"' in html
    assert 'id="clone-btn"' in client.get(f"/studies/{world.s1.pk}/").content.decode()
    r = client.post("/studies/new/", form_data(world, name="Copy of Sepsis alpha", cloned_from=world.s1.pk))
    assert r.status_code == 302, r.content.decode()[:3000]
    copy = Study.objects.get(name="Copy of Sepsis alpha")
    assert copy.status == "draft" and copy.pk != world.s1.pk and copy.owner == world.users["researcher"]
    ev = AuditEvent.objects.get(study_id=copy.pk, action="study.created")
    assert ev.data["cloned_from"] == {"id": world.s1.pk, "name": "Sepsis alpha"}
    assert Study.objects.get(pk=world.s1.pk).status == "recruiting"


@pytest.mark.parametrize("who, status", [("outsider", 404), ("hadmin3", 404), ("auditor", 403), ("hadmin1", 404)])
def test_edit_and_clone_go_through_the_access_policy(world, client, who, status):
    """Another consortium's users get 404 for every page and POST; inside the consortium, roles
    that do not manage studies get 403 (a hospital admin does not even see a draft: 404)."""
    client.force_login(world.users[who])
    draft = world.draft
    assert client.get(f"/studies/{draft.pk}/edit/").status_code == status
    assert client.post(f"/studies/{draft.pk}/edit/", form_data(world, name="Hijacked")).status_code == status
    assert client.get(f"/studies/{draft.pk}/clone/").status_code == status
    assert Study.objects.get(pk=draft.pk).name == "Draft alpha"


def test_cloning_another_consortiums_study_is_404(world, client):
    client.force_login(world.users["outsider"])
    for sid in (world.s1.pk, world.draft.pk):
        assert client.get(f"/studies/{sid}/clone/").status_code == 404
    # A form posted in the outsider's own consortium naming a foreign study as its source.
    data = form_data(world, consortium=world.c2.pk, hospitals=[world.h3.pk], quorum=1, name="Sneaky",
                     cloned_from=world.s1.pk)
    assert client.post("/studies/new/", data).status_code == 404
    assert client.post("/studies/new/", {**data, "cloned_from": "abc"}).status_code == 404
    assert not Study.objects.filter(name="Sneaky").exists()
