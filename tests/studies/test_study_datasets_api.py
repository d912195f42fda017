"""A study names the data set each hospital's node uses (fedproto.datasets): one name for all or one
per hospital, validated (names, never paths; only invited hospitals), stored, sent in every work
item's study and recorded in the audit trail's study.created event."""

from __future__ import annotations

import pytest
from audit_support import SCHEMA
from django.contrib.auth import get_user_model
from nodeclient import enrol

from audit.models import AuditEvent
from consortia.models import Membership
from consortia.services import consortium_create, hospital_create
from fedproto.datasets import dataset_for, validate_datasets
from fedproto.errors import SpecError
from studies.models import Study
from studies.selectors import study_config

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("raw, normal", [
    (None, {"default": "default"}),
    ("cohort2024", {"default": "cohort2024"}),
    ({"hospitals": {12: "icu_2023", "3": "a.b-c"}}, {"default": "default", "hospitals": {"3": "a.b-c", "12": "icu_2023"}}),
    ({"default": "x", "hospitals": {}}, {"default": "x"}),
])
def test_valid_datasets_normalise(raw, normal):
    assert validate_datasets(raw) == normal
    assert dataset_for(normal, 12) == normal.get("hospitals", {}).get("12", normal["default"])


@pytest.mark.parametrize("raw, message", [
    ("../x", "not a data set name"), ("x/y", "not a data set name"), (".hidden", "not a data set name"),
    ("C:\\data", "not a data set name"), ("", "not a data set name"), ("a" * 65, "not a data set name"),
    ({"default": 3}, "not a data set name"), ({"hospitals": {"1": "../../etc"}}, "hospitals[1]"),
    ({"hospitals": {"one": "x"}}, "not a hospital id"), ({"hospitals": {"0": "x"}}, "not a hospital id"),
    ({"hospitals": {True: "x"}}, "not a hospital id"), ({"hospitals": ["x"]}, "must be an object"),
    ({"path": "/srv/x.csv"}, "unknown field"), (["x"], "a data set name, or an object"),
    ({"hospitals": {"1": "x", "01": "y"}}, "twice"),
])
def test_bad_datasets_are_refused(raw, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_datasets(raw)


@pytest.fixture
def world(db):
    from django.core.cache import cache

    cache.clear()
    c = consortium_create(name="Datasets consortium")
    other = consortium_create(name="Elsewhere")
    a, b = hospital_create(consortium=c, name="A"), hospital_create(consortium=c, name="B")
    a.node, b.node = enrol(a), enrol(b)
    stranger = hospital_create(consortium=other, name="Z")
    users = {}
    for name, cons in (("rita", c), ("otto", other)):
        users[name] = get_user_model().objects.create_user(name, password="x")
        Membership.objects.create(user=users[name], consortium=cons, role=Membership.Role.RESEARCHER)
    return c, a, b, stranger, users


def _payload(c, hospitals, **over):
    d = {"consortium_id": c.pk, "name": "ds study", "hospital_ids": [h.pk for h in hospitals], "schema": SCHEMA,
         "model": {"type": "logistic_regression"}, "rounds": 2, "local_epochs": 1, "batch_size": 16,
         "learning_rate": 0.1, "privacy": {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0},
         "encryption": {"codec": "bfv-packed-v1"}, "quorum": 2, "round_deadline_s": 600, "seed": 3}
    d.update(over)
    return d


def test_the_api_stores_the_data_sets_and_every_node_receives_them(world, client):
    c, a, b, _, users = world
    client.force_login(users["rita"])
    r = client.post("/api/studies/", data=_payload(c, [a, b], datasets={"default": "cohort2024",
                                                                         "hospitals": {str(b.pk): "icu_2023"}}),
                    content_type="application/json")
    assert r.status_code == 201, r.content
    want = {"default": "cohort2024", "hospitals": {str(b.pk): "icu_2023"}}
    assert r.json()["datasets"] == want
    study = Study.objects.get(pk=r.json()["id"])
    assert study.datasets == want and study_config(study)["datasets"] == want
    created = AuditEvent.objects.get(action="study.created", study_id=study.pk)
    assert created.data["config"]["datasets"] == want
    client.post(f"/api/studies/{study.pk}/start")
    # Each node's invitation carries the study's data sets; each resolves its own.
    for h, name in ((a, "cohort2024"), (b, "icu_2023")):
        items = h.node.get("work?wait=0").json()["items"]
        (inv,) = [i for i in items if i["kind"] == "invitation"]
        assert inv["study"]["datasets"] == want and dataset_for(inv["study"]["datasets"], h.pk) == name
    # Without the field: every hospital's "default".
    r = client.post("/api/studies/", data=_payload(c, [a, b], name="plain"), content_type="application/json")
    assert r.status_code == 201 and r.json()["datasets"] == {"default": "default"}


@pytest.mark.parametrize("datasets, message", [
    ("../x", "not a data set name"),
    ({"hospitals": {"1": "a/b"}}, "not a data set name"),
    ({"default": "x", "path": "/srv"}, "unknown field"),
])
def test_the_api_refuses_bad_data_set_names(world, client, datasets, message):
    c, a, b, _, users = world
    client.force_login(users["rita"])
    r = client.post("/api/studies/", data=_payload(c, [a, b], datasets=datasets), content_type="application/json")
    assert r.status_code == 422 and message in r.json()["error"], r.content
    assert not Study.objects.exists()


def test_only_invited_hospitals_and_only_in_ones_own_consortium(world, client):
    c, a, b, stranger, users = world
    client.force_login(users["rita"])
    r = client.post("/api/studies/", data=_payload(c, [a], quorum=1, datasets={"hospitals": {str(b.pk): "x"}}),
                    content_type="application/json")
    assert r.status_code == 422 and "does not invite" in r.json()["error"], r.content
    r = client.post("/api/studies/", data=_payload(c, [a], quorum=1, datasets={"hospitals": {str(stranger.pk): "x"}}),
                    content_type="application/json")
    assert r.status_code == 422 and "does not invite" in r.json()["error"]
    client.force_login(users["otto"])  # a researcher of another consortium
    r = client.post("/api/studies/", data=_payload(c, [a, b], datasets="x"), content_type="application/json")
    assert r.status_code == 404
    assert not Study.objects.exists()
