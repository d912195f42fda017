"""Only the hospitals that approved a study take part (contexts, keys, aggregates, attestations),
the final round is attested by its contributors only, and a release blocked by differing
attestations is a visible state that a consortium admin resolves."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.utils import timezone
from nacl.public import SealedBox
from nodeclient import encrypted_frame, enrol, run_setup
from release_support import released_model
from rest_framework.test import APIClient

from audit.models import AuditEvent
from consortia.models import Hospital, Membership
from consortia.services import consortium_create, enrolment_token_create, hospital_create, membership_grant, node_revoke
from devstack.demo_data import breast_cancer_split
from studies import services
from studies.models import FinalModel, Participation, Round, RoundReport, Study, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)



@functools.cache
def MODEL() -> bytes:
    """The final model of the studies here (the demo split's schema, which every study here uses)."""
    with tempfile.TemporaryDirectory() as tmp:
        return released_model(breast_cancer_split(Path(tmp), ["A"]).schema)


def MODEL_SHA() -> str:
    return hashlib.sha256(MODEL()).hexdigest()


BOGUS_SHA = "f" * 64


@pytest.fixture
def trio(tmp_path, eager_celery):
    """A one-round study: A (custodian) and B approve and set up keys; C is invited."""
    cache.clear()  # the enrolment throttle (per address, in the process cache) counts every test's nodes
    data = breast_cancer_split(tmp_path, ["A", "B", "C"])
    c = consortium_create(name="trio consortium")
    ha, hb, hc = (hospital_create(consortium=c, name=n) for n in "ABC")
    na, nb, nc = enrol(ha), enrol(hb), enrol(hc)
    study = services.study_create(
        consortium=c, name="trio study", hospitals=[ha, hb, hc], schema=data.schema,
        model_spec={"type": "logistic_regression"}, rounds=1, local_epochs=1, batch_size=32, learning_rate=0.1,
        privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}, encryption={"codec": "bfv-packed-v1"},
        quorum=2, round_deadline_s=600, seed=5)
    services.study_open_recruitment(study=study, actor="test")
    w = {"consortium": c, "study": study, "a": na, "b": nb, "c": nc}
    run_setup(w)
    return w


def _train_round(w, nodes=("a", "b")):
    study = w["study"]
    for n in nodes:
        node = w[n]
        (job,) = [i for i in node.work() if i["kind"] == "train"]
        assert node.upload(job["job_id"], encrypted_frame(node, study)).status_code == 201


def _key_up(w, node):
    """The custodian A relays the key to ``node``, which acknowledges it."""
    study = w["study"]
    sealed = SealedBox(node.key.public_key).encrypt(w["a"].secret)
    r = w["a"].post(f"studies/{study.pk}/sealed-keys", {"keys": [{"hospital_id": node.hospital.pk,
                                                                  "sealed": base64.b64encode(sealed).decode()}]})
    assert r.status_code == 201, r.content
    assert node.get(f"studies/{study.pk}/sealed-key").status_code == 200
    sha = node.get(f"studies/{study.pk}/context").json()["sha256"]
    assert node.post(f"studies/{study.pk}/key-ack", {"public_params_sha256": sha}).status_code == 200


def _refusals(study, hospital, action="participant.refused"):
    return AuditEvent.objects.filter(study_id=study.pk, action=action, hospital_id=hospital.pk)


def test_a_hospital_that_declined_gets_nothing_and_each_refusal_is_audited(trio):
    study, c = trio["study"], trio["c"]
    assert c.post(f"studies/{study.pk}/decision", {"decision": "decline"}).status_code == 200
    _train_round(trio)
    assert Study.objects.get(pk=study.pk).status == Study.Status.COMPLETED
    attempts = [
        c.post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": BOGUS_SHA, "metrics": {"auc": 0.5}}),
        c.get(f"studies/{study.pk}/context"),
        c.get(f"studies/{study.pk}/sealed-key"),
        c.post(f"studies/{study.pk}/key-ack", {"public_params_sha256": "0" * 64}),
        c.get(f"studies/{study.pk}/rounds/1/aggregate"),
        c.put_bytes(f"studies/{study.pk}/final-model", MODEL()),
    ]
    for r in attempts:
        assert r.status_code == 403, (r.status_code, r.content)
        assert r.json()["code"] == "not_approved"
    assert not RoundReport.objects.filter(hospital=c.hospital).exists()
    assert _refusals(study, c.hospital).count() == len(attempts)
    # The approved hospitals are served as before.
    assert trio["b"].get(f"studies/{study.pk}/context").status_code == 200
    assert trio["b"].get(f"studies/{study.pk}/rounds/1/aggregate").status_code == 200


def test_a_hospital_never_invited_learns_nothing(trio, tmp_path):
    study = trio["study"]
    outsider = enrol(hospital_create(consortium=trio["consortium"], name="D"))
    r = outsider.post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": BOGUS_SHA})
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_the_final_round_is_attested_by_its_contributors_only(trio):
    study, c = trio["study"], trio["c"]
    assert c.post(f"studies/{study.pk}/decision", {"decision": "approve"}).status_code == 200
    # C approved after the keys went out: it gets its key, then refuses its job; A and B contribute.
    _key_up(trio, c)
    (job,) = [i for i in c.work() if i["kind"] == "train"]
    assert c.post(f"jobs/{job['job_id']}/refuse", {"reason": "not today"}).status_code == 200
    _train_round(trio)
    assert Study.objects.get(pk=study.pk).status == Study.Status.COMPLETED
    assert not [i for i in c.work() if i["kind"] == "evaluate"]  # not offered to a non-contributor
    r = c.post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": BOGUS_SHA, "metrics": {}})
    assert r.status_code == 403 and r.json()["code"] == "not_contributor"
    assert _refusals(study, c.hospital).filter(data__code="not_contributor").count() == 1
    assert [i["kind"] for i in trio["b"].work()] == ["evaluate"]
    r = trio["b"].post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": MODEL_SHA(), "metrics": {"auc": 0.9}})
    assert r.status_code == 201


def _blocked(trio):
    """Both contributors attest, B a different model than the custodian A: the release is blocked."""
    study, a, b = trio["study"], trio["a"], trio["b"]
    assert trio["c"].post(f"studies/{study.pk}/decision", {"decision": "decline"}).status_code == 200
    _train_round(trio)
    assert a.post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": MODEL_SHA(), "metrics": {}}).status_code == 201
    assert b.post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": BOGUS_SHA, "metrics": {}}).status_code == 201
    return study, a, b


def _user(django_user_model, consortium, name, role, hospital=None):
    u = django_user_model.objects.create_user(username=name, password="x" * 20)
    membership_grant(user=u, consortium=consortium, role=role, hospital=hospital)
    client = APIClient()
    client.force_login(u)
    return client


def test_a_blocked_release_is_shown_not_retried_and_refused_once(trio, django_user_model):
    study, a, b = _blocked(trio)
    assert not [i for i in a.work() if i["kind"] == "upload_final_model"]  # not offered while blocked
    for _ in range(5):  # a custodian retrying anyway
        r = a.put_bytes(f"studies/{study.pk}/final-model", MODEL())
        assert r.status_code == 409 and r.json()["code"] == "attestation_mismatch"
    assert _refusals(study, a.hospital, "model.release_refused").count() == 1
    admin = _user(django_user_model, trio["consortium"], "cadmin", Membership.Role.CONSORTIUM_ADMIN)
    block = admin.get(f"/api/studies/{study.pk}/").json()["release_blocked"]
    assert block["code"] == "attestation_mismatch" and block["round"] == 1
    assert {h for att in block["attestations"] for h in att["hospitals"]} == {"A", "B"}
    page = admin.get(f"/studies/{study.pk}/")
    assert b'id="release-blocked"' in page.content and b'id="release-rerun"' in page.content
    assert BOGUS_SHA.encode() in page.content


def test_a_researcher_cannot_resolve_a_blocked_release(trio, django_user_model):
    study, _, _ = _blocked(trio)
    researcher = _user(django_user_model, trio["consortium"], "res", Membership.Role.RESEARCHER)
    r = researcher.post(f"/api/studies/{study.pk}/release-override")
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert researcher.post(f"/studies/{study.pk}/release/override/").status_code == 403
    assert AuditEvent.objects.filter(study_id=study.pk, action="model.release_resolution_refused").count() == 2
    assert Study.objects.get(pk=study.pk).release_override_at is None


def test_rerun_of_the_final_evaluation_unblocks_the_release(trio, django_user_model):
    study, a, b = _blocked(trio)
    admin = _user(django_user_model, trio["consortium"], "cadmin", Membership.Role.CONSORTIUM_ADMIN)
    r = admin.post(f"/studies/{study.pk}/release/rerun/")
    assert r.status_code == 302
    assert AuditEvent.objects.filter(study_id=study.pk, action="model.evaluation_rerun").count() == 1
    assert RoundReport.objects.filter(round__study=study, superseded_at__isnull=False).count() == 2
    for node in (a, b):  # both evaluate again, under a new item key
        (item,) = [i for i in node.work() if i["kind"] == "evaluate"]
        assert item["key"] == f"evaluate:{study.pk}:1:1"
        assert node.post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": MODEL_SHA(), "metrics": {}}).status_code == 201
    assert admin.get(f"/api/studies/{study.pk}/").json()["release_blocked"] is None
    (up,) = [i for i in a.work() if i["kind"] == "upload_final_model"]
    assert up["key"] == f"upload_final_model:{study.pk}:1"
    assert a.put_bytes(f"studies/{study.pk}/final-model", MODEL()).status_code == 201
    assert FinalModel.objects.get(study=study).sha256 == MODEL_SHA()
    # Nothing left to resolve.
    r = admin.post(f"/api/studies/{study.pk}/rerun-evaluation")
    assert r.status_code == 409 and r.json()["code"] == "not_blocked"


def test_release_with_the_disagreement_on_record(trio, django_user_model):
    study, a, b = _blocked(trio)
    admin = _user(django_user_model, trio["consortium"], "cadmin", Membership.Role.CONSORTIUM_ADMIN)
    r = admin.post(f"/api/studies/{study.pk}/release-override")
    assert r.status_code == 200, r.content
    assert r.json()["release_blocked"] is None and r.json()["release_override"]["by"].endswith(":cadmin")
    assert [i["kind"] for i in a.work()] == ["upload_final_model"]
    assert a.put_bytes(f"studies/{study.pk}/final-model", MODEL()).status_code == 201
    ev = AuditEvent.objects.get(study_id=study.pk, action="model.released")
    assert ev.data["disagreement"] == sorted([MODEL_SHA(), BOGUS_SHA]) and ev.data["override_by"].endswith(":cadmin")
    assert AuditEvent.objects.filter(study_id=study.pk, action="model.release_override").count() == 1


def test_revoking_a_node_withdraws_it_and_rounds_stop_waiting_for_it(trio):
    study, c = trio["study"], trio["c"]
    assert c.post(f"studies/{study.pk}/decision", {"decision": "approve"}).status_code == 200
    _key_up(trio, c)
    assert Study.objects.get(pk=study.pk).status == Study.Status.RUNNING
    spare, _ = enrolment_token_create(hospital=c.hospital)
    _train_round(trio)  # A and B upload; the round waits for C's job
    assert Round.objects.get(study=study).status == Round.Status.COLLECTING
    notes = node_revoke(hospital=c.hospital, actor="user:1:cadmin")
    assert Round.objects.get(study=study).status == Round.Status.DONE  # no longer waits for C
    assert Study.objects.get(pk=study.pk).status == Study.Status.COMPLETED
    p = Participation.objects.get(study=study, hospital=c.hospital)
    assert p.state == Participation.State.WITHDRAWN
    assert TrainingJob.objects.get(round__study=study, hospital=c.hospital).status == TrainingJob.Status.EXPIRED
    ev = AuditEvent.objects.get(study_id=study.pk, action="participation.withdrawn")
    assert ev.data["holds_study_key"] is True and ev.data["was"] == "approved"
    assert any("keeps its copy of the key" in n for n in notes) and any("1 unused enrolment token" in n for n in notes)
    spare.refresh_from_db()
    assert spare.revoked_at is not None and spare.state == "revoked"
    assert c.get("work?wait=0").status_code == 401
    # Re-enrolment (docs/node.md): a new token, a new identity; the withdrawal stands.
    again = enrol(c.hospital)
    assert again.work() == []
    assert again.get(f"studies/{study.pk}/rounds/1/aggregate").json()["code"] == "not_approved"


def test_revoking_a_node_below_the_quorum_fails_the_study_with_a_clear_reason(trio, django_user_model):
    study, b = trio["study"], trio["b"]
    assert trio["c"].post(f"studies/{study.pk}/decision", {"decision": "decline"}).status_code == 200
    assert Study.objects.get(pk=study.pk).status == Study.Status.RUNNING
    admin = _user(django_user_model, trio["consortium"], "cadmin", Membership.Role.CONSORTIUM_ADMIN)
    r = admin.post(f"/hospitals/{b.hospital.pk}/revoke/", follow=True)
    assert r.status_code == 200
    study.refresh_from_db()
    assert study.status == Study.Status.FAILED
    assert "B was withdrawn" in study.status_reason and "the quorum is 2" in study.status_reason
    assert not TrainingJob.objects.filter(round__study=study, status=TrainingJob.Status.DISPATCHED).exists()
    assert b"failed: B was withdrawn" in r.content and b"keeps its copy of the key" in r.content


def test_while_the_custodian_is_offline_another_key_holder_releases_the_final_model(trio, settings):
    """A custodian gone for good must not leave a completed study without its model: the platform
    asks another key holder that attested the final round; any other hospital is still refused."""
    study, a, b, c = trio["study"], trio["a"], trio["b"], trio["c"]
    assert c.post(f"studies/{study.pk}/decision", {"decision": "decline"}).status_code == 200
    _train_round(trio)
    for node in (a, b):
        assert node.post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": MODEL_SHA(), "metrics": {}}).status_code == 201
    assert [i["kind"] for i in a.work()] == ["upload_final_model"]
    assert not [i for i in b.work() if i["kind"] == "upload_final_model"]  # the custodian is online
    r = b.put_bytes(f"studies/{study.pk}/final-model", MODEL())
    assert r.status_code == 403 and r.json()["code"] == "not_custodian"
    assert _refusals(study, b.hospital, "model.release_refused").filter(data__code="not_custodian").count() == 1

    settings.NODE_ONLINE_WINDOW_S = 90
    Hospital.objects.filter(pk=a.hospital.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=600))
    (item,) = [i for i in b.work() if i["kind"] == "upload_final_model"]
    assert item["round"] == 1
    assert b.put_bytes(f"studies/{study.pk}/final-model", MODEL()).status_code == 201
    fm = FinalModel.objects.get(study=study)
    assert fm.sha256 == MODEL_SHA() and fm.uploaded_by_id == b.hospital.pk
    ev = AuditEvent.objects.get(study_id=study.pk, action="model.released")
    assert ev.data["custodian_offline"] == a.hospital.pk


class _Untouchable(io.RawIOBase):
    def read(self, n=-1):
        raise AssertionError("the final model's body was read")


def test_the_final_model_upload_checks_caller_and_state_before_reading_and_streams(trio, settings, tmp_path):
    study, a, b, c = trio["study"], trio["a"], trio["b"], trio["c"]
    assert c.post(f"studies/{study.pk}/decision", {"decision": "decline"}).status_code == 200

    def store(node, stream, length):
        with pytest.raises(services.ServiceError) as err:
            services.final_model_store(study=study, hospital=node.hospital, stream=stream, content_length=length)
        return err.value

    big = 400 * 1024 ** 2
    assert store(a, _Untouchable(), big).code == "not_ready"  # the study is still running: nothing read
    _train_round(trio)
    for node in (a, b):
        assert node.post(f"studies/{study.pk}/rounds/1/report", {"model_sha256": MODEL_SHA(), "metrics": {}}).status_code == 201
    assert store(b, _Untouchable(), big).code == "not_custodian"  # not the custodian: nothing read
    assert store(c, _Untouchable(), big).code == "not_approved"
    err = store(a, _Untouchable(), big)  # far larger than a model of this study can be
    assert (err.code, err.status) == ("too_large", 413) and f"({study.n_params} parameters)" in str(err)
    r = a.client.put(f"/api/node/studies/{study.pk}/final-model", data=b"", content_type="application/octet-stream",
                     CONTENT_LENGTH=str(big))
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    # A body shorter than its Content-Length: refused, nothing left behind.
    err = store(a, io.BytesIO(MODEL()), len(MODEL()) + 10)
    assert err.code == "truncated" and not FinalModel.objects.exists()
    models_dir = Path(settings.MEDIA_ROOT) / "models"
    assert not list(models_dir.glob(".*")), list(models_dir.iterdir())
    # The attested model, streamed in small reads.
    fm = services.final_model_store(study=study, hospital=a.hospital, stream=io.BufferedReader(io.BytesIO(MODEL()), 7),
                                    content_length=len(MODEL()))
    assert fm.sha256 == MODEL_SHA() and (Path(settings.MEDIA_ROOT) / fm.path).read_bytes() == MODEL()
