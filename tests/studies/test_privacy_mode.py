"""Study privacy mode on the platform: local (default, unchanged) or distributed (validated through
the API, recorded in the study, its model stated by the audit report and the recomputation; it is
not started while the secure-aggregation round exchange is not served)."""

from __future__ import annotations

import io

import pytest
from audit_support import SCHEMA, enrolled
from django.contrib.auth import get_user_model
from django.core.management import call_command

from consortia.models import Membership
from consortia.services import consortium_create
from reports.privacy_model import privacy_model, privacy_model_line
from studies import services
from studies.models import Study
from studies.selectors import study_config

pytestmark = pytest.mark.django_db

DDP = {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "mode": "distributed", "collusion": 1}
ENC = {"codec": "bfv-packed-v1", "max_hospitals": 20, "quant_bits": 24}


@pytest.fixture
def four(db):
    c = consortium_create(name="DDP consortium")
    hospitals = [enrolled(c, f"H{i}") for i in range(4)]
    user = get_user_model().objects.create_user("rita", password="x")
    Membership.objects.create(user=user, consortium=c, role=Membership.Role.RESEARCHER)
    return c, hospitals, user


def payload(c, hospitals, **over):
    d = {"consortium_id": c.pk, "name": "ddp", "purpose": "", "hospital_ids": [h.pk for h in hospitals],
         "schema": SCHEMA, "model": {"type": "logistic_regression"}, "rounds": 3, "local_epochs": 1, "batch_size": 16,
         "learning_rate": 0.1, "privacy": DDP, "encryption": ENC, "quorum": 3, "round_deadline_s": 600, "seed": 7}
    d.update(over)
    return d


def test_api_validates_distributed_mode_and_records_it_in_the_study(four, client):
    c, hospitals, user = four
    client.force_login(user)
    bad = [(payload(c, hospitals[:2], quorum=2), "at least 3 hospitals"),
           (payload(c, hospitals, quorum=2), "threshold is 3"),
           (payload(c, hospitals, privacy={**DDP, "collusion": 3}), "below the quorum"),
           (payload(c, hospitals, privacy={**DDP, "collusion": -1}), "collusion"),
           (payload(c, hospitals, privacy={**DDP, "mode": "central"}), "privacy mode 'central' is not supported"),
           (payload(c, hospitals, encryption={**ENC, "quant_bits": 12}), "digits")]
    for body, message in bad:
        r = client.post("/api/studies/", data=body, content_type="application/json")
        assert r.status_code == 422, r.content
        assert message in r.json()["error"], r.json()
    assert not Study.objects.exists()  # nothing half-written
    r = client.post("/api/studies/", data=payload(c, hospitals), content_type="application/json")
    assert r.status_code == 201, r.content
    study = Study.objects.get(pk=r.json()["id"])
    assert (study.privacy_mode, study.collusion, study.quant_step, study.quorum) == ("distributed", 1, 1 / 1024, 3)
    assert study_config(study)["privacy"] == {**DDP, "accountant": "rdp", "quant_step": 1 / 1024}
    # the platform serves the secure-aggregation exchange (tests/studies/test_secagg_api.py): it starts
    r = client.post(f"/api/studies/{study.pk}/start")
    assert r.status_code == 200, r.content
    assert Study.objects.get(pk=study.pk).status == Study.Status.RECRUITING


def test_local_mode_is_the_default_and_its_wire_form_is_unchanged(four):
    c, hospitals, _ = four
    study = services.study_create(consortium=c, name="local", hospitals=hospitals[:2], schema=SCHEMA,
                                  model_spec={"type": "logistic_regression"}, rounds=2, local_epochs=1, batch_size=16,
                                  learning_rate=0.1, privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0},
                                  encryption={"codec": "bfv-packed-v1"}, quorum=2, round_deadline_s=600, seed=3)
    assert study.privacy_mode == "local" and study.collusion == 0
    assert study_config(study)["privacy"] == {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "accountant": "rdp"}
    assert privacy_model(study)["privacy_model"] == "local"
    assert privacy_model_line(study).startswith("local DP")


def test_report_and_recomputation_state_the_model_the_threshold_and_the_epsilon(four, client):
    c, hospitals, user = four
    client.force_login(user)
    r = client.post("/api/studies/", data=payload(c, hospitals), content_type="application/json")
    study = Study.objects.get(pk=r.json()["id"])
    s = privacy_model(study)
    assert s["privacy_model"] == "distributed" and s["collusion"] == 1 and s["honest_shares"] == 2
    assert 0.99 < s["epsilon"] <= 1.0
    line = privacy_model_line(study)
    assert "collusion threshold T = 1" in line and f"epsilon {s['epsilon']:.4g}" in line
    out = io.StringIO()
    call_command("audit_recompute_epsilon", "--study", str(study.pk), stdout=out)
    assert f"Privacy model: {line}" in out.getvalue()
    from django.utils.html import escape

    from reports.report import build_context, render_html
    ctx = build_context(study, cached=False)
    assert dict(ctx["config"])["Privacy model"] == line
    assert escape(line) in render_html(study, context=ctx)


def test_a_stored_study_whose_plan_no_longer_holds_says_so(four):
    c, hospitals, _ = four
    study = services.study_create(consortium=c, name="ddp2", hospitals=hospitals, schema=SCHEMA,
                                  model_spec={"type": "logistic_regression"}, rounds=2, local_epochs=1, batch_size=16,
                                  learning_rate=0.1, privacy=DDP, encryption=ENC, quorum=3, round_deadline_s=600, seed=3)
    Study.objects.filter(pk=study.pk).update(quorum=1)  # T = 1 >= Q: no honest share guaranteed
    study.refresh_from_db()
    assert privacy_model(study)["epsilon"] is None
    assert "no noise plan" in privacy_model_line(study)
