"""The new-study form names the data set the hospitals' nodes use: one for all, and per hospital
("Hospital name = data set" lines, invited hospitals only; names, never paths)."""

from __future__ import annotations

import pytest
from test_forms import form_data

from studies.models import Study

pytestmark = pytest.mark.django_db


def test_one_data_set_for_all_and_one_per_hospital(world, client):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world, dataset="cohort2024",
                                               hospital_datasets="Beta Hospital = icu_2023\n\n"))
    assert r.status_code == 302, r.content.decode()[:3000]
    s = Study.objects.get(name="Form study")
    assert s.datasets == {"default": "cohort2024", "hospitals": {str(world.h2.pk): "icu_2023"}}
    page = client.get(r["Location"]).content.decode()
    assert "icu_2023" in page  # the configuration the study page shows
    r = client.post("/studies/new/", form_data(world, name="Plain", dataset=""))
    assert r.status_code == 302 and Study.objects.get(name="Plain").datasets == {"default": "default"}


@pytest.mark.parametrize("over, message", [
    ({"dataset": "../x"}, "not a data set name"),
    ({"dataset": "/srv/data.csv"}, "not a data set name"),
    ({"hospital_datasets": "Beta Hospital = ../../etc/passwd"}, "not a data set name"),
    ({"hospital_datasets": "Gamma Hospital = x"}, "is not one of the invited hospitals"),  # another consortium's
    ({"hospital_datasets": "Beta Hospital"}, "write Hospital name = data set name"),
])
def test_bad_data_set_names_are_form_errors(world, client, over, message):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world, **over))
    assert r.status_code == 422 and message in r.content.decode()
    assert not Study.objects.filter(name="Form study").exists()


def test_the_hospital_admin_sees_which_data_set_the_node_will_read(world, client):
    world.s2.datasets = {"default": "cohort2024", "hospitals": {str(world.h2.pk): "icu_2023"}}
    world.s2.save(update_fields=["datasets"])
    client.force_login(world.users["hadmin2"])
    html = client.get(f"/inbox/{world.p2.pk}/").content.decode()
    assert "Read your data set <code>icu_2023</code>" in html
    assert f"python -m hospital_node check --config node.toml --study {world.s2.pk}" in html
