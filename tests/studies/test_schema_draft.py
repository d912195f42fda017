"""Schema draft from a CSV header or a small sample (studies/schema_draft.py, POST /api/studies/schema-draft):
types, categories, missing values, label and survival guesses; the sample is never stored, logged or
echoed; bad input (binary, oversized, malformed, bad header) is a clear 4xx; who may draft."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

from consortia.models import Membership
from consortia.services import consortium_create, hospital_create
from fedproto.schema import validate_schema
from studies.schema_draft import MAX_COLUMNS, MAX_SAMPLE_BYTES, DraftError, draft_schema

URL = "/api/studies/schema-draft"
# A secret-looking cell value: it must never appear in an answer's error, a log line or a file.
PATIENT = "Zq7PatientValue"
SAMPLE = ("age,sex,grade,menostat,marker,pid,time,cens,outcome\n"
          f"61,M,II,Pre,1.5,{PATIENT},100,1,1\n"
          "55,F,I,Post,,p2,200,0,0\n"
          "70,F,III,Post,2.25,p3,,1,1\n"
          "48,M,II,,0.5,p4,50,0,0\n"
          "66,F,I,Post,0.75,p5,80,1,0\n")


def _feature(draft, name):
    return next(f for f in draft["schema"]["features"] if f["name"] == name)


def test_types_categories_missing_values_and_the_label_are_guessed_from_a_sample():
    d = draft_schema(SAMPLE)
    assert validate_schema(d["schema"]) == d["schema"]
    assert d["schema"]["label"] == {"name": "outcome", "type": "binary"}
    assert _feature(d, "age")["type"] == "int" and _feature(d, "age")["range"] == [40.0, 80.0]
    assert _feature(d, "sex") == {"name": "sex", "type": "categorical", "categories": ["F", "M"]}
    assert _feature(d, "grade") == {"name": "grade", "type": "ordinal", "levels": ["I", "II", "III"]}
    assert _feature(d, "menostat")["missing"] == "mode" and _feature(d, "menostat")["missing_indicator"]
    assert _feature(d, "marker")["type"] == "float" and _feature(d, "marker")["missing"] == "median"
    assert _feature(d, "cens")["type"] == "bool"
    names = [f["name"] for f in d["schema"]["features"]]
    assert "pid" not in names  # an identifier: left out, and said so
    pid = next(c for c in d["columns"] if c["name"] == "pid")
    assert pid["type"] == "text" and PATIENT not in str(d)
    assert "outcome" in d["label_candidates"]


def test_survival_time_and_event_by_name_and_explicit_columns():
    d = draft_schema(SAMPLE, task="survival")
    assert d["schema"]["label"] == {"type": "survival", "time": "time", "event": "cens"}
    assert d["survival"] == {"time": ["time"], "event": ["cens"]}
    d = draft_schema(SAMPLE, task="survival", time="age", event="outcome")
    assert d["schema"]["label"] == {"type": "survival", "time": "age", "event": "outcome"}
    with pytest.raises(DraftError, match="time and event"):
        draft_schema("a,b,c\n1,2,3\n", task="survival")


def test_a_header_line_alone_drafts_float_features_and_a_multiclass_label_needs_its_classes():
    d = draft_schema("age,bmi,stage")
    assert d["schema"]["features"] == [{"name": "age", "type": "float"}, {"name": "bmi", "type": "float"}]
    assert d["schema"]["label"]["name"] == "stage" and "header only" in d["notes"][0]
    d = draft_schema("x,stage\n1,a\n2,b\n3,c\n4,a\n5,b\n6,c\n", task="multiclass_classification", label="stage")
    assert d["schema"]["label"] == {"name": "stage", "type": "class", "classes": ["a", "b", "c"]}
    with pytest.raises(DraftError, match="classes"):
        draft_schema("x,stage", task="multiclass_classification")


@pytest.mark.parametrize("data, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "binary data"),
    (b"age,sex\n\xff\xfe61,M\n", "not UTF-8"),
    ("", "empty"),
    ("age;sex;outcome\n1;2;3\n", "comma-separated"),
    ("age,,outcome\n1,2,3\n", "no name"),
    ("age,age,outcome\n1,2,3\n", "more than once"),
    ("age,sex,outcome\n1,2\n", "line 2 of the sample has 2 fields"),
    ('age,sex,outcome\n1,"unclosed,3\n', "not a valid CSV"),
    ("1age,sex,outcome\n", "not usable"),
    (",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)), "columns; the limit"),
    ("a" * (MAX_SAMPLE_BYTES + 1), "the limit is"),
])
def test_bad_samples_are_refused_with_the_reason_and_no_value(data, message):
    with pytest.raises(DraftError, match=message) as exc:
        draft_schema(data)
    assert PATIENT not in str(exc.value)


# ------------------------------------------------------------------------------------------ the API

@pytest.fixture
def people(db):
    c = consortium_create(name="Draft consortium")
    other = consortium_create(name="Other consortium")
    h = hospital_create(consortium=c, name="Draft H")
    users = {}
    for name, cons, role, hosp in (("rita", c, Membership.Role.RESEARCHER, None),
                                   ("hank", c, Membership.Role.HOSPITAL_ADMIN, h),
                                   ("otto", other, Membership.Role.RESEARCHER, None)):
        users[name] = get_user_model().objects.create_user(name, password="x")
        Membership.objects.create(user=users[name], consortium=cons, role=role, hospital=hosp)
    return c, other, users


def test_a_researcher_drafts_from_text_and_from_an_upload(people, client, caplog):
    c, _, users = people
    client.force_login(users["rita"])
    caplog.set_level(logging.DEBUG)
    r = client.post(URL, data={"sample": SAMPLE, "consortium_id": c.pk}, content_type="application/json")
    assert r.status_code == 200, r.content
    assert r.json()["schema"]["label"] == {"name": "outcome", "type": "binary"}
    r = client.post(URL, data={"file": SimpleUploadedFile("s.csv", SAMPLE.encode(), "text/csv"), "task": "survival"})
    assert r.status_code == 200, r.content
    assert r.json()["schema"]["label"]["time"] == "time"
    assert PATIENT not in caplog.text and "p2" not in caplog.text


def test_who_may_draft(people, client):
    c, other, users = people
    assert client.post(URL, data={"sample": "a,b"}, content_type="application/json").status_code in (401, 403)
    client.force_login(users["hank"])  # a hospital admin defines no study
    r = client.post(URL, data={"sample": "a,b"}, content_type="application/json")
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    client.force_login(users["otto"])  # a researcher of another consortium: this one is not revealed
    r = client.post(URL, data={"sample": "a,b", "consortium_id": c.pk}, content_type="application/json")
    assert r.status_code == 404, r.content
    r = client.post(URL, data={"sample": "a,b", "consortium_id": other.pk}, content_type="application/json")
    assert r.status_code == 200, r.content


def test_an_oversized_upload_is_413_and_never_reaches_the_disk(people, client, settings, tmp_path):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)  # where Django would spool a large upload
    client.force_login(people[2]["rita"])
    big = ("age,outcome\n" + f"61,{PATIENT}\n" * (3 * 1024 * 1024 // 18)).encode()
    assert len(big) > settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    r = client.post(URL, data={"file": SimpleUploadedFile("big.csv", big, "text/csv")})
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.content
    assert str(MAX_SAMPLE_BYTES) in r.json()["error"] and PATIENT not in r.content.decode()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("body, status", [
    ({"file": SimpleUploadedFile("x.xlsx", b"PK\x03\x04\x00\x00zip", "application/octet-stream")}, 422),
    ({"file": SimpleUploadedFile("x.csv", f'age,outcome\n"{PATIENT},1\n'.encode(), "text/csv")}, 422),
    ({"file": SimpleUploadedFile("x.csv", b"age,age\n1,2\n", "text/csv")}, 422),
    ({"sample": "a,b", "task": "nonsense"}, 400),
    ({"sample": "a,b", "label": "zz"}, 422),
    ({}, 422),
])
def test_bad_input_is_a_json_4xx(people, client, body, status):
    client.force_login(people[2]["rita"])
    r = client.post(URL, data=body)
    assert r.status_code == status, r.content
    assert set(r.json()) == {"error", "code"} and PATIENT not in r.json()["error"]
