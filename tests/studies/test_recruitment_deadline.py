"""Recruitment has a deadline and a status that says whom it waits for: at the deadline a study
starts with the hospitals that hold its key (quorum permitting), the others withdrawn, or fails
naming whom it waited for; the deadline does not run while the platform itself is away. Driven
through the node API with real TenSEAL keys (tests/support/nodeclient.py)."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from nacl.public import SealedBox
from nodeclient import enrol
from rest_framework.test import APIClient

from audit.models import AuditEvent
from audit.selectors import verify_study_chain
from consortia.models import Membership
from consortia.services import consortium_create, hospital_create, membership_grant
from devstack.demo_data import breast_cancer_split
from fedproto.codec import get_codec
from studies import services
from studies.models import Participation, PlatformHeartbeat, Round, Study, TrainingJob
from studies.selectors import recruitment_status

Role = Membership.Role
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def three(tmp_path):
    """A recruiting study (quorum 2) with three enrolled hospitals A, B and C, none answered yet."""
    from django.core.cache import cache

    cache.clear()
    data = breast_cancer_split(tmp_path, ["A", "B", "C"])
    c = consortium_create(name="Deadline consortium")
    hs = [hospital_create(consortium=c, name=n) for n in "ABC"]
    nodes = {h.name: enrol(h) for h in hs}
    study = services.study_create(
        consortium=c, name="deadline study", hospitals=hs, schema=data.schema,
        model_spec={"type": "logistic_regression"}, rounds=2, local_epochs=1, batch_size=32, learning_rate=0.1,
        privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}, encryption={"codec": "bfv-packed-v1"},
        quorum=2, round_deadline_s=600, seed=5, recruitment_window_s=3600)
    services.study_open_recruitment(study=study, actor="test")
    return {"consortium": c, "study": study, "nodes": nodes, "hospitals": {h.name: h for h in hs}}


def _approve(node, study):
    r = node.post(f"studies/{study.pk}/decision", {"decision": "approve"})
    assert r.status_code == 200, r.content


def _publish(custodian, study):
    codec = get_codec(study.encryption["codec"])
    custodian.secret = codec.generate_secret(study.encryption)
    pub = codec.public_params(custodian.secret)
    r = custodian.post(f"studies/{study.pk}/context",
                       {"codec": codec.name, "public_params": base64.b64encode(pub).decode()})
    assert r.status_code == 201, r.content


def _take_key(custodian, node, study):
    sealed = SealedBox(node.key.public_key).encrypt(custodian.secret)
    r = custodian.post(f"studies/{study.pk}/sealed-keys",
                       {"keys": [{"hospital_id": node.hospital.pk, "sealed": base64.b64encode(sealed).decode()}]})
    assert r.status_code == 201, r.content
    assert node.get(f"studies/{study.pk}/sealed-key").status_code == 200
    sha = node.get(f"studies/{study.pk}/context").json()["sha256"]
    assert node.post(f"studies/{study.pk}/key-ack", {"public_params_sha256": sha}).status_code == 200


def _pass_deadline(study, seconds=1):
    Study.objects.filter(pk=study.pk).update(recruitment_deadline=timezone.now() - timedelta(seconds=seconds))
    # the reconciler ran just now: the platform was not away
    PlatformHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": timezone.now()})


def test_recruitment_opens_with_a_deadline_and_says_whom_it_waits_for(three):
    study, n = three["study"], three["nodes"]
    study.refresh_from_db()
    assert abs((study.recruitment_deadline - timezone.now()).total_seconds() - 3600) < 60
    _approve(n["A"], study)  # A approves first: the key custodian
    st = recruitment_status(Study.objects.get(pk=study.pk))
    waiting = {w["hospital"]: w["waiting_for"] for w in st["waiting_for"]}
    assert waiting == {"A": "encryption_context", "B": "decision", "C": "decision"}
    assert 0 < st["seconds_left"] <= 3600
    _publish(n["A"], study)
    _approve(n["B"], study)
    waiting = {w["hospital"]: w["waiting_for"] for w in recruitment_status(Study.objects.get(pk=study.pk))["waiting_for"]}
    assert waiting == {"B": "key_relay", "C": "decision"}


def test_at_the_deadline_the_study_starts_with_the_key_holders_and_withdraws_the_rest(three):
    study, n = three["study"], three["nodes"]
    _approve(n["A"], study)
    _publish(n["A"], study)
    _approve(n["B"], study)
    _take_key(n["A"], n["B"], study)
    services.study_advance(study_id=study.pk)
    assert Study.objects.get(pk=study.pk).status == Study.Status.RECRUITING  # C has not answered, deadline ahead
    _pass_deadline(study)
    services.study_advance(study_id=study.pk)
    study.refresh_from_db()
    assert study.status == Study.Status.RUNNING, study.status_reason
    assert "recruitment closed at its deadline" in study.status_reason and "withdrawn: C" in study.status_reason
    c = Participation.objects.get(study=study, hospital__name="C")
    assert c.state == Participation.State.WITHDRAWN and "did not answer" in c.reason
    rnd = Round.objects.get(study=study, number=1)
    assert sorted(TrainingJob.objects.filter(round=rnd).values_list("hospital__name", flat=True)) == ["A", "B"]
    assert AuditEvent.objects.filter(study_id=study.pk, action="participation.withdrawn",
                                     hospital_id=c.hospital_id).count() == 1
    # C's node no longer sees the invitation; a late decision is refused
    assert not [i for i in n["C"].work() if i.get("key") == f"invitation:{study.pk}"]
    r = n["C"].post(f"studies/{study.pk}/decision", {"decision": "approve"})
    assert r.status_code == 409 and r.json()["code"] == "wrong_state"
    assert verify_study_chain(study.pk).ok


def test_an_approved_hospital_without_the_key_is_withdrawn_too(three):
    study, n = three["study"], three["nodes"]
    for name in "ABC":
        _approve(n[name], study)
    _publish(n["A"], study)
    _take_key(n["A"], n["B"], study)  # C approved but never took its key (its node went away)
    _pass_deadline(study)
    services.study_advance(study_id=study.pk)
    study.refresh_from_db()
    assert study.status == Study.Status.RUNNING
    c = Participation.objects.get(study=study, hospital__name="C")
    assert c.state == Participation.State.WITHDRAWN and "did not take the study key" in c.reason


def test_the_study_fails_naming_an_absent_custodian(three):
    study, n = three["study"], three["nodes"]
    _approve(n["A"], study)  # the custodian, whose node then goes offline for good
    _approve(n["B"], study)
    _approve(n["C"], study)
    _pass_deadline(study)
    services.study_advance(study_id=study.pk)
    study.refresh_from_db()
    assert study.status == Study.Status.FAILED
    assert "the encryption context was never published" in study.status_reason
    assert "A is the key custodian and has not published the encryption context" in study.status_reason
    assert not Round.objects.filter(study=study).exists()
    assert verify_study_chain(study.pk).ok


def test_the_study_fails_when_too_few_hold_the_key(three):
    study, n = three["study"], three["nodes"]
    _approve(n["A"], study)
    _publish(n["A"], study)  # only the custodian holds the key; B and C never answer (quorum 2)
    _pass_deadline(study)
    services.study_advance(study_id=study.pk)
    study.refresh_from_db()
    assert study.status == Study.Status.FAILED
    assert "1 hospital(s) hold the study key and the quorum is 2" in study.status_reason
    assert "B has not answered the invitation" in study.status_reason


def test_a_decision_after_the_deadline_is_refused_before_the_study_is_closed(three):
    study, n = three["study"], three["nodes"]
    _pass_deadline(study)
    r = n["A"].post(f"studies/{study.pk}/decision", {"decision": "approve"})
    assert r.status_code == 409 and r.json()["code"] == "recruitment_closed", r.content
    assert Participation.objects.get(study=study, hospital__name="A").state == Participation.State.INVITED


def test_the_deadline_waits_while_the_platform_is_away_and_moves_on_by_the_gap(three):
    study, n = three["study"], three["nodes"]
    _approve(n["A"], study)
    _publish(n["A"], study)
    _approve(n["B"], study)
    deadline = timezone.now() - timedelta(seconds=30)
    Study.objects.filter(pk=study.pk).update(recruitment_deadline=deadline)
    # the reconciler last ran ten minutes ago: the platform was down, the deadline passed meanwhile
    PlatformHeartbeat.objects.update_or_create(pk=1, defaults={"beat_at": timezone.now() - timedelta(seconds=600)})
    services.study_advance(study_id=study.pk)
    assert Study.objects.get(pk=study.pk).status == Study.Status.RECRUITING  # not failed for its deadline
    r = n["C"].post(f"studies/{study.pk}/decision", {"decision": "decline", "reason": "not this time"})
    assert r.status_code == 200, r.content  # decisions stay open while the platform catches up
    gap = services.platform_beat()
    assert gap >= 600
    study.refresh_from_db()
    assert (study.recruitment_deadline - deadline).total_seconds() == pytest.approx(gap, abs=1)
    ev = AuditEvent.objects.get(study_id=study.pk, action="study.recruitment_deadline_extended")
    assert ev.data["by_s"] >= 600
    services.study_advance(study_id=study.pk)
    assert Study.objects.get(pk=study.pk).status == Study.Status.RECRUITING  # B can still take its key
    _take_key(n["A"], n["B"], study)
    assert Study.objects.get(pk=study.pk).status == Study.Status.RUNNING


def test_the_api_shows_the_recruitment_status_scoped_to_the_viewer(three):
    study, n, hs = three["study"], three["nodes"], three["hospitals"]
    _approve(n["A"], study)
    researcher = User.objects.create_user("rita", password="pw-rita-123456")
    membership_grant(consortium=three["consortium"], user=researcher, role=Role.RESEARCHER, actor="test")
    api = APIClient()
    api.force_authenticate(researcher)
    body = api.get(f"/api/studies/{study.pk}/").json()
    assert body["recruitment_window_s"] == 3600
    assert {w["hospital"] for w in body["recruitment"]["waiting_for"]} == {"A", "B", "C"}
    admin_b = User.objects.create_user("bob", password="pw-bob-1234567")
    membership_grant(consortium=three["consortium"], user=admin_b, role=Role.HOSPITAL_ADMIN, hospital=hs["B"],
                     actor="test")
    api.force_authenticate(admin_b)
    body = api.get(f"/api/studies/{study.pk}/").json()
    assert [w["hospital"] for w in body["recruitment"]["waiting_for"]] == ["B"]
    assert body["recruitment"]["others_waiting"] == 2


@pytest.mark.parametrize("window", [0, 5, 90 * 24 * 3600 + 1, "soon", None])
def test_a_bad_recruitment_window_is_refused(three, window):
    researcher = User.objects.create_user("rita2", password="pw-rita-123456")
    membership_grant(consortium=three["consortium"], user=researcher, role=Role.RESEARCHER, actor="test")
    api = APIClient()
    api.force_authenticate(researcher)
    study = three["study"]
    payload = {"consortium_id": three["consortium"].pk, "name": "windowed", "hospital_ids":
               [h.pk for h in three["hospitals"].values()], "schema": study.schema, "model": study.model_spec,
               "rounds": 2, "local_epochs": 1, "batch_size": 32, "learning_rate": 0.1,
               "privacy": {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}, "quorum": 2,
               "recruitment_window_s": window}
    r = api.post("/api/studies/", payload, format="json")
    assert r.status_code in (400, 422), r.content
    assert "recruitment_window_s" in r.content.decode()
    assert not Study.objects.filter(name="windowed").exists()
