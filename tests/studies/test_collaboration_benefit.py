"""The collaboration benefit on the platform: "auto" settings from declared sizes through the API,
the local-only baseline a node reports with its final evaluation (checked, stored, shown), and a
hospital whose federated model is worse than its own local-only model seeing it plainly."""

from __future__ import annotations

import pytest
from audit_support import SCHEMA, done_round_with_jobs, light_world, postgres  # noqa: F401 - fixtures
from django.contrib.auth import get_user_model

from consortia.models import Membership
from reports.epsilon_check import epsilon_for
from reports.report import render_html
from studies import services
from studies.api.limits import local_only as check_local_only
from studies.benefit import benefit_rows, benefit_summary
from studies.models import RoundReport, Study
from studies.services import ServiceError

pytestmark = pytest.mark.django_db(transaction=True)
SHA = "ab" * 32


def _baseline(auc: float, **over) -> dict:
    return {"metrics": {"auc": auc, "accuracy": 0.7}, "n_train": 90, "n_test": 10, "epsilon": 0.99,
            "noise_multiplier": 3.1, "sample_rate": 1.0, "steps": 10, **over}


@pytest.fixture
def researcher(client, light_world):  # noqa: F811
    user = get_user_model().objects.create_user("rita", password="x")
    Membership.objects.create(user=user, consortium=light_world["consortium"], role=Membership.Role.RESEARCHER)
    client.force_login(user)
    return light_world


def _create(client, world, **fields):
    a, b, _ = world["hospitals"]
    body = {"consortium_id": world["consortium"].pk, "name": "auto study", "hospital_ids": [a.pk, b.pk],
            "schema": SCHEMA, "model": {"type": "logistic_regression"}, "privacy": {"epsilon": 1.0, "delta": 1e-5},
            "quorum": 2, **fields}
    return client.post("/api/studies/", data=body, content_type="application/json")


def test_auto_settings_are_chosen_from_the_declared_sizes(client, researcher):
    r = _create(client, researcher, settings="auto", dataset_sizes=[60, 140])
    assert r.status_code == 201, r.content
    s = Study.objects.get(pk=r.json()["id"])
    assert (s.rounds, s.local_epochs, s.batch_size, s.learning_rate, s.clip_norm) == (10, 1, 0, 2.0, 1.0)
    assert s.evaluation == {"holdout": "auto", "local_baseline": True} == r.json()["evaluation"]
    assert r.json()["collaboration_benefit"] == []


def test_a_preset_batch_scales_with_the_declared_sizes(client, researcher):
    r = _create(client, researcher, settings="standard", dataset_sizes=[50, 140])
    assert r.status_code == 201, r.content
    s = Study.objects.get(pk=r.json()["id"])
    assert (s.rounds, s.local_epochs, s.batch_size, s.learning_rate) == (10, 2, 12, 0.1)  # not 64: a quarter of 50


@pytest.mark.parametrize("fields, message", [
    ({"settings": "auto", "dataset_sizes": [60], "rounds": 3}, "chooses rounds itself"),
    ({"settings": "auto"}, "dataset_sizes"),
    ({"settings": "auto", "dataset_sizes": [1]}, "between 2 and"),
    ({"rounds": 3, "local_epochs": 1, "learning_rate": 0.1}, "batch_size required"),
    ({"rounds": 3, "local_epochs": 1, "batch_size": 8, "learning_rate": 0.1,
      "privacy": {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}, "evaluation": {"holdout": 0.9}}, "between 0 and 0.5"),
])
def test_bad_settings_are_refused_with_what_to_fix(client, researcher, fields, message):
    r = _create(client, researcher, **fields)
    assert r.status_code == 422 and message in r.content.decode(), r.content
    assert not Study.objects.filter(name="auto study").exists()


@pytest.mark.parametrize("bad, match", [
    ("yes", "must be an object"), (_baseline(0.7, steps=-1), "steps must be a whole number"),
    (_baseline(0.7, sample_rate=1.5), "sample_rate must be a number"), ({"metrics": {}}, "exactly the fields"),
    (_baseline(0.7, metrics={"auc": "high"}), "name -> number"), (_baseline(float("nan")), "name -> number"),
])
def test_a_malformed_local_only_report_is_refused(bad, match):
    with pytest.raises(ServiceError, match=match):
        check_local_only(bad)


def test_local_only_rides_with_the_final_round_only(light_world):  # noqa: F811
    study, (a, b, _) = light_world["study"], light_world["hospitals"]
    first, _ = done_round_with_jobs(study, [a, b], 1)
    with pytest.raises(ServiceError, match="final round"):
        services.round_report_record(rnd=first, hospital=a, metrics={"auc": 0.8}, n_test=10, model_sha256=SHA,
                                     epsilon_spent=0.5, local_only=_baseline(0.7))
    assert not RoundReport.objects.exists()


def test_each_hospital_sees_the_federated_model_against_its_local_only_one(client, light_world):  # noqa: F811
    study, (a, b, _) = light_world["study"], light_world["hospitals"]
    final, _ = done_round_with_jobs(study, [a, b], study.rounds)
    true_eps = epsilon_for([(8.0, 1.0, 10)], study.delta, study.accountant)  # no job spends recorded here
    assert true_eps < study.epsilon
    # B's node reports less than its baseline cost: the audit report's recomputation says so
    for h, fed, local, eps in ((a, 0.81, 0.70, true_eps), (b, 0.66, 0.72, true_eps / 2)):
        services.round_report_record(rnd=final, hospital=h, metrics={"auc": fed, "accuracy": 0.7}, n_test=10,
                                     model_sha256=SHA, epsilon_spent=eps,
                                     local_only=check_local_only(_baseline(local, epsilon=eps, noise_multiplier=8.0)))
    rows = {r["hospital"]: r for r in benefit_rows(study)}
    assert rows["Hospital A"]["difference"] == pytest.approx(0.11) and not rows["Hospital A"]["worse"]
    assert rows["Hospital B"]["difference"] == pytest.approx(-0.06) and rows["Hospital B"]["worse"]
    summary = benefit_summary(list(rows.values()))
    assert summary == ("1 of 2 hospitals score better with the federated model; worse than its own local-only model "
                       "at: Hospital B.")
    html = render_html(study)
    assert 'id="benefit"' in html and "federated worse" in html and summary in html
    assert html.count("MISMATCH or over budget") == 1 and f"{true_eps:.4f} / {true_eps:.4f} <span class=\"ok\">ok" in html
    user = get_user_model().objects.create_user("rita", password="x")
    Membership.objects.create(user=user, consortium=light_world["consortium"], role=Membership.Role.RESEARCHER)
    client.force_login(user)
    page = client.get(f"/studies/{study.pk}/").content.decode()
    assert "Collaboration benefit" in page and "federated model worse" in page and "0.720" in page
