"""The new-study form's "draft the schema from a CSV header or sample" step: the draft fills the
schema box for the researcher to confirm; the sample is never stored or logged; bad samples are a
form error; who may use it."""

from __future__ import annotations

import json
import logging

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from test_forms import form_data

from audit.models import AuditEvent
from studies.models import Study
from studies.schema_draft import MAX_SAMPLE_BYTES

pytestmark = pytest.mark.django_db

PATIENT = "Zq7PatientValue"
SAMPLE = ("age,menostat,tgrade,marker,pid,outcome\n"
          f"61,Pre,II,1.5,{PATIENT},1\n"
          "55,Post,I,,p2,0\n"
          "70,Post,III,2.25,p3,1\n"
          "48,,II,0.5,p4,0\n")


def _draft(client, w, **over):
    body = form_data(w, draft_schema="1", **over)
    return client.post("/studies/new/", body)


def test_a_sample_drafts_the_schema_which_the_researcher_confirms(world, client, caplog):
    client.force_login(world.users["researcher"])
    caplog.set_level(logging.DEBUG)
    r = _draft(client, world, name="Drafted study", schema_text="",
               schema_sample=SimpleUploadedFile("sample.csv", SAMPLE.encode(), "text/csv"))
    html = r.content.decode()
    assert r.status_code == 200, html[:2000]
    assert "never stored, logged or sent to the hospitals" in html and "Schema drafted from the sample" in html
    assert "categories: Post, Pre" in html and "levels, in order: I, II, III" in html
    assert PATIENT not in html.replace("looks like free text", "")  # the identifier column is named, not shown
    form = r.context["form"]
    assert not form.is_bound and form.initial["name"] == "Drafted study"  # the rest of the form is kept
    assert [str(h) for h in form.initial["hospitals"]] == [str(world.h1.pk), str(world.h2.pk)]
    schema = json.loads(form.initial["schema_text"])
    assert {f["name"]: f["type"] for f in schema["features"]} == {"age": "int", "menostat": "categorical",
                                                                   "tgrade": "ordinal", "marker": "float"}
    assert not Study.objects.filter(name="Drafted study").exists()  # a draft step creates nothing
    # The researcher confirms (the box as drafted) and creates the study.
    r = client.post("/studies/new/", form_data(world, name="Drafted study", schema_text=form.initial["schema_text"]))
    assert r.status_code == 302, r.content.decode()[:3000]
    s = Study.objects.get(name="Drafted study")
    assert s.schema["features"][1]["categories"] == ["Post", "Pre"] and s.schema["label"]["name"] == "outcome"
    for text in (caplog.text, *(json.dumps(e.data) for e in AuditEvent.objects.all())):
        assert PATIENT not in text and "p2" not in text


def test_a_pasted_header_is_drafted_in_the_box(world, client):
    client.force_login(world.users["cadmin"])
    r = _draft(client, world, schema_text="age,bmi,died", task="binary_classification")
    assert r.status_code == 200
    schema = json.loads(r.context["form"].initial["schema_text"])
    assert schema["label"] == {"name": "died", "type": "binary"} and "header only" in r.content.decode()


@pytest.mark.parametrize("sample, message", [
    (SimpleUploadedFile("big.csv", b"a,b\n" + b"1,2\n" * (MAX_SAMPLE_BYTES // 4 + 1), "text/csv"), "the limit is"),
    (SimpleUploadedFile("x.xlsx", b"PK\x03\x04\x00\x00\x00", "application/octet-stream"), "binary data"),
    (SimpleUploadedFile("x.csv", f'a,b\n"{PATIENT},2\n'.encode(), "text/csv"), "not a valid CSV"),
    (SimpleUploadedFile("x.csv", b"a,a,b\n1,2,3\n", "text/csv"), "more than once"),
    (None, "choose a sample CSV file"),
])
def test_bad_samples_are_form_errors(world, client, sample, message):
    client.force_login(world.users["researcher"])
    over = {"schema_text": json.dumps({"task": "x"})}
    if sample is not None:
        over["schema_sample"] = sample
    r = _draft(client, world, **over)
    html = r.content.decode()
    assert r.status_code == 422 and "Schema draft:" in html and message in html, html[:3000]
    assert PATIENT not in html


def test_the_draft_step_needs_csrf_and_a_study_role(world):
    c = Client(enforce_csrf_checks=True)
    c.force_login(world.users["researcher"])
    r = c.post("/studies/new/", form_data(world, draft_schema="1", schema_text="a,b"))
    assert r.status_code == 403
    c = Client()
    c.force_login(world.users["hadmin1"])
    r = c.post("/studies/new/", form_data(world, draft_schema="1", schema_text="a,b"))
    assert r.status_code == 403
    c.force_login(world.users["outsider"])  # a researcher of the other consortium: North's hospitals are not offered
    r = c.post("/studies/new/", form_data(world, draft_schema="1", schema_text="a,b"))
    assert r.status_code == 200 and "Alpha Hospital" not in r.content.decode()
