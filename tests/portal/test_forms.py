"""The new-study form: valid definitions become drafts; invalid ones say what to fix."""

from __future__ import annotations

import json

import pytest
from portal_support import SCHEMA

from studies.models import Study

pytestmark = pytest.mark.django_db


def form_data(w, **over):
    d = {"consortium": w.c1.pk, "name": "Form study", "purpose": "test", "schema_text": json.dumps(SCHEMA),
         "task": "binary_classification", "label_column": "", "model_type": "logistic_regression", "hidden": "16",
         "rounds": 2, "local_epochs": 1, "batch_size": 32, "learning_rate": 0.5, "epsilon": 1.0, "delta": 1e-5,
         "clip_norm": 1.0, "encryption_preset": "bfv-standard", "quorum": 2, "round_deadline_s": 120,
         "hospitals": [w.h1.pk, w.h2.pk], "dataset_sizes": "300, 3000"}
    d.update(over)
    return d


def test_create_draft_from_json_schema(world, client):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world))
    assert r.status_code == 302, r.content.decode()[:2000]
    s = Study.objects.get(name="Form study")
    assert s.status == Study.Status.DRAFT and s.owner == world.users["researcher"]
    assert s.encryption["codec"] == "bfv-packed-raw-v1" and s.participations.count() == 2
    page = client.get(r["Location"])
    html = page.content.decode()
    assert "Before you start" in html and "σ at ε = 1.0 (chosen)" in html and "3000" in html
    assert 'id="start-btn"' in html


def test_create_from_csv_header(world, client):
    client.force_login(world.users["cadmin"])
    # Beta only: Alpha allows logistic regression only (the form would refuse to invite it for an MLP).
    r = client.post("/studies/new/", form_data(world, name="CSV study", schema_text="age,bmi,sbp,outcome",
                                               model_type="mlp_classifier", hidden="8,4", quorum=1,
                                               hospitals=[world.h2.pk]))
    assert r.status_code == 302
    s = Study.objects.get(name="CSV study")
    assert [f["name"] for f in s.schema["features"]] == ["age", "bmi", "sbp"] and s.schema["label"]["name"] == "outcome"
    assert s.model_spec == {"type": "mlp_classifier", "hidden": [8, 4]}


@pytest.mark.parametrize("over, message", [
    ({"model_type": "linear_regression"}, "is for regression, but the data schema&#x27;s task is binary_classification"),
    ({"schema_text": "{not json"}, "the schema is not valid JSON"),
    ({"schema_text": "age,bmi", "label_column": "nope"}, "label column"),
    ({"quorum": 3}, "cannot exceed the number of invited hospitals"),
    ({"name": "Sepsis alpha"}, "already exists in this consortium"),          # from studies.services (SpecError)
    ({"hidden": "8,x", "model_type": "mlp_classifier"}, "whole numbers"),
    ({"epsilon": 0}, "greater than or equal to"),
])
def test_errors_shown_on_form(world, client, over, message):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world, **over))
    assert r.status_code == 422
    assert message in r.content.decode()
    assert not Study.objects.filter(name="Form study").exists()


def test_cannot_invite_other_consortium_hospital(world, client):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world, hospitals=[world.h1.pk, world.h3.pk]))
    assert r.status_code == 422 and "Select a valid choice" in r.content.decode()
    client.force_login(world.users["outsider"])
    r = client.post("/studies/new/", form_data(world, consortium=world.c1.pk, hospitals=[world.h3.pk], quorum=1))
    assert r.status_code == 422 and not Study.objects.filter(name="Form study").exists()


def test_privacy_preview_fragment(world, client):
    client.force_login(world.users["researcher"])
    r = client.get("/studies/privacy-preview/?epsilon=1&delta=1e-5&batch_size=32&rounds=2&local_epochs=1&sizes=1000")
    html = r.content.decode()
    assert r.status_code == 200 and "<table" in html and "1000" in html
    from portal.noise_preview import noise_multiplier

    sigma = noise_multiplier(1.0, 1e-5, 32, 1000, 2, 1)
    assert 0.3 < sigma < 5 and f"{sigma:.2f}" in html
    r = client.get("/studies/privacy-preview/?epsilon=abc")
    assert r.status_code == 200 and "Fill in" in r.content.decode()


def test_auto_settings_and_evaluation_from_the_form(world, client):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world, settings="auto", rounds="", batch_size="", dataset_sizes="80, 150",
                                               holdout="0.15", local_baseline="no"))
    assert r.status_code == 302, r.content.decode()[:2000]
    s = Study.objects.get(name="Form study")
    assert (s.rounds, s.local_epochs, s.batch_size, s.learning_rate, s.clip_norm) == (10, 1, 0, 2.0, 1.0)
    assert s.evaluation == {"holdout": 0.15, "local_baseline": False}


@pytest.mark.parametrize("over, message", [
    ({"settings": "auto", "dataset_sizes": ""}, "expected data set sizes"),
    ({"holdout": "most"}, "&quot;auto&quot; or a number between 0 and 0.5"),
    ({"holdout": "0.7"}, "between 0 and 0.5"),
])
def test_bad_auto_or_holdout_is_shown_on_the_form(world, client, over, message):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world, **over))
    assert r.status_code == 422 and message in r.content.decode()
    assert not Study.objects.filter(name="Form study").exists()


def test_the_recruitment_window_from_the_form_and_the_live_status(world, client):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world, name="Windowed", recruitment_days=3))
    assert r.status_code == 302, r.content.decode()[:2000]
    s = Study.objects.get(name="Windowed")
    assert s.recruitment_window_s == 3 * 24 * 3600
    assert client.post(f"/studies/{s.pk}/start/").status_code == 302
    html = client.get(f"/studies/{s.pk}/").content.decode()
    assert Study.objects.get(pk=s.pk).status == Study.Status.RECRUITING
    assert 'id="recruitment"' in html and "Recruitment closes" in html
    assert "(in 3 d 0 h)" in html or "(in 2 d 23 h)" in html
    assert "Alpha Hospital has not answered the invitation" in html and "never seen" in html
    live = client.get(f"/studies/{s.pk}/live/").content.decode()  # the panel is part of the polled fragment
    assert "Beta Hospital has not answered the invitation" in live
    bad = client.post("/studies/new/", form_data(world, name="Too long", recruitment_days=91))
    assert bad.status_code == 422 and "less than or equal to 90" in bad.content.decode()


def test_form_shows_the_settings_evaluation_fields_with_help(world, client):
    client.force_login(world.users["researcher"])
    html = client.get("/studies/new/").content.decode()
    for field, help_words in (("settings", "Auto ignores the rounds"), ("holdout", "10 % up to 500"),
                              ("local_baseline", "what the collaboration gained")):
        assert f'name="{field}"' in html and f'<label for="id_{field}">' in html, field
        assert help_words in html, field
    assert '<option value="auto">Auto: rounds' in html and '<option value="no">No baseline' in html
    assert "<legend>Evaluation (on each hospital's own rows)</legend>" in html


def test_holdout_error_is_shown_at_its_field_and_the_form_keeps_the_choices(world, client):
    client.force_login(world.users["researcher"])
    r = client.post("/studies/new/", form_data(world, holdout="0.7", local_baseline="no", settings="manual"))
    html = r.content.decode()
    assert r.status_code == 422
    field = html[html.index('<label for="id_holdout">') - 200:html.index('<label for="id_local_baseline">')]
    assert "has-error" in field and "between 0 and 0.5" in field and 'value="0.7"' in field
    assert '<option value="no" selected>No baseline' in html
