"""The node API: authentication, object isolation, key handling and upload validation."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings as django_settings
from nodeclient import encrypted_frame, run_setup

from audit.models import AuditEvent
from fedproto import wire
from fedproto.codec import get_codec
from studies.models import EncryptedUpdate, HEContext, SealedKey, Study, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)


def job_of(node, study) -> int:
    items = [i for i in node.work() if i["kind"] == "train"]
    assert items, node.work()
    return items[0]["job_id"]


def test_bad_token_is_401_and_enrolment_token_is_one_time(world):
    from rest_framework.test import APIClient

    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Token node_not-a-real-token")
    r = c.get("/api/node/work?wait=0")
    assert r.status_code == 401
    assert "re-enrol" in r.json()["error"]
    from consortia.services import enrolment_token_create

    _, token = enrolment_token_create(hospital=world["a"].hospital)
    body = {"enrolment_token": token, "public_key": base64.b64encode(b"\x01" * 32).decode()}
    assert APIClient().post("/api/node/enrol", body, format="json").status_code == 201
    r = APIClient().post("/api/node/enrol", body, format="json")
    assert r.status_code == 403 and "already used" in r.json()["error"]


def test_tokens_are_stored_hashed(world):
    from consortia.models import Hospital

    h = Hospital.objects.get(pk=world["a"].hospital.pk)
    assert world["a"].token not in h.token_hash and len(h.token_hash) == 64
    assert not AuditEvent.objects.filter(data__icontains=world["a"].token).exists()


def test_context_with_a_secret_key_is_refused_and_db_holds_only_public_material(world, eager_celery):
    study, a = world["study"], world["a"]
    for n in (a, world["b"]):
        n.post(f"studies/{study.pk}/decision", {"decision": "approve"})
    codec = get_codec("bfv-packed-v1")
    secret = codec.generate_secret(study.encryption)
    r = a.post(f"studies/{study.pk}/context", {"codec": "bfv-packed-v1", "public_params": base64.b64encode(secret).decode()})
    assert r.status_code == 422, r.content
    assert "public_params rejected" in r.json()["error"]
    assert not HEContext.objects.filter(study=study).exists()
    assert AuditEvent.objects.filter(study_id=study.pk, action="he_context.rejected").exists()
    # The non-custodian may not publish at all.
    r = world["b"].post(f"studies/{study.pk}/context", {"codec": "bfv-packed-v1",
                                                        "public_params": base64.b64encode(codec.public_params(secret)).decode()})
    assert r.status_code == 403
    run_setup(world)
    study.refresh_from_db()
    assert study.status == Study.Status.RUNNING
    # Nothing stored on the platform contains the secret: the context is parameters only and
    # loads as such; sealed keys are opaque to the platform.
    secret_a = world["a"].secret
    ctx = HEContext.objects.get(study=study)
    codec.load_params(bytes(ctx.public_params))
    assert len(bytes(ctx.public_params)) < len(secret_a) // 4
    assert secret_a not in bytes(ctx.public_params)
    for sk in SealedKey.objects.filter(study=study):
        assert secret_a not in bytes(sk.sealed)


def test_upload_validation(world, eager_celery):
    run_setup(world)
    study, a, b = world["study"], world["a"], world["b"]
    ja, jb = job_of(a, study), job_of(b, study)
    # A node cannot see or touch another node's job.
    assert a.put_bytes(f"jobs/{jb}/update", encrypted_frame(a, study)).status_code == 404
    # Not an encrypted frame (a plaintext vector of floats).
    plain = np.arange(study.n_params, dtype=np.float64).tobytes()
    r = a.put_bytes(f"jobs/{ja}/update", plain)
    assert r.status_code == 422 and "not an encrypted-update frame" in r.json()["error"]
    # A frame whose part is a plaintext, not a ciphertext.
    r = a.put_bytes(f"jobs/{ja}/update", wire.pack_parts([plain]))
    assert r.status_code == 422, r.content
    # A ciphertext under another context (foreign parameters: the CKKS baseline's).
    ckks = get_codec("ckks-flare")
    enc = ckks.validate_config({"codec": "ckks-flare"})
    foreign = ckks.encrypt_update(ckks.generate_secret(enc), enc, np.zeros(study.n_params), 10, np.random.default_rng(1))
    r = a.put_bytes(f"jobs/{ja}/update", wire.pack_parts(foreign[:1]))
    # Larger than any update of this study's model can be: refused from its Content-Length.
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.content
    assert "an update of this study's model" in r.json()["error"]
    # Wrong number of parts.
    good = encrypted_frame(a, study)
    parts = wire.unpack_parts(good)
    r = a.put_bytes(f"jobs/{ja}/update", wire.pack_parts(parts + parts))
    assert r.status_code == 422 and "needs exactly" in r.json()["error"]
    # Wrong media type.
    assert a.put_bytes(f"jobs/{ja}/update", good, content_type="application/json").status_code == 415
    assert not EncryptedUpdate.objects.exists()
    rejected = AuditEvent.objects.filter(study_id=study.pk, action="update.rejected").count()
    assert rejected >= 4
    # A valid upload is accepted once; a duplicate is a 409.
    r = a.put_bytes(f"jobs/{ja}/update", good)
    assert r.status_code == 201, r.content
    r = a.put_bytes(f"jobs/{ja}/update", good)
    assert r.status_code == 409
    assert TrainingJob.objects.get(pk=ja).status == TrainingJob.Status.UPLOADED


def test_round_aggregates_and_nodes_decrypt_the_mean(world, eager_celery):
    run_setup(world)
    study, a, b = world["study"], world["a"], world["b"]
    codec = get_codec(study.encryption["codec"])
    rng = np.random.default_rng(3)
    ua, ub = rng.normal(0, 0.05, study.n_params), rng.normal(0, 0.05, study.n_params)
    for node, u, n in ((a, ua, 100), (b, ub, 300)):
        jid = job_of(node, study)
        frame = wire.pack_parts(codec.encrypt_update(node.secret, study.encryption, u, n, rng))
        assert node.upload(jid, frame).status_code == 201
    r = b.get(f"studies/{study.pk}/rounds/1/aggregate")
    assert r.status_code == 200 and r["X-Contributors"] == "2"
    frame = b"".join(r.streaming_content)
    parts = wire.unpack_parts(frame)
    res = codec.decrypt_aggregate(b.secret, study.encryption, parts, study.n_params)
    expected = (100 * ua + 300 * ub) / 400
    assert res.n_contributors == 2
    assert np.max(np.abs(res.mean_update - expected)) < 2e-3
    items = b.work()
    assert any(i["kind"] == "evaluate" for i in items)
    # Round 2's train item carries round 1's aggregate, byte for byte what the endpoint serves.
    (train,) = [i for i in items if i["kind"] == "train"]
    prev = train["previous_aggregate"]
    assert train["round"] == 2 and prev["round"] == 1 and prev["contributors"] == 2
    assert base64.b64decode(prev["frame_b64"]) == frame and prev["sha256"] == r["X-Aggregate-SHA256"]


SPEND = {"epsilon": 0.4, "delta": 1e-5, "noise_multiplier": 2.0, "sample_rate": 0.1, "steps": 10, "clip_norm": 1.0,
         "accountant": "rdp", "accountant_version": "opacus-1.6.0", "epsilon_round": 0.4, "dp_engine": "fused"}


def test_privacy_spend_sent_with_the_upload_is_recorded_first_and_a_bad_one_stops_the_upload(world, eager_celery):
    from studies.models import PrivacySpend

    run_setup(world)
    study, a, b = world["study"], world["a"], world["b"]
    ja, jb = job_of(a, study), job_of(b, study)
    # Not a JSON object, or missing fields: 422 naming the problem; neither spend nor update is kept.
    r = a.put_bytes(f"jobs/{ja}/update", encrypted_frame(a, study), headers={"X-Privacy-Spend": "[1, 2]"})
    assert r.status_code == 422 and "X-Privacy-Spend must be a JSON object" in r.json()["error"]
    r = a.put_bytes(f"jobs/{ja}/update", encrypted_frame(a, study), headers={"X-Privacy-Spend": '{"epsilon": 0.4}'})
    assert r.status_code == 422 and "missing" in r.json()["error"]
    bad_engine = json.dumps({**SPEND, "dp_engine": "fused; DROP TABLE"})
    r = a.put_bytes(f"jobs/{ja}/update", encrypted_frame(a, study), headers={"X-Privacy-Spend": bad_engine})
    assert r.status_code == 422 and "dp_engine must be the node's DP-SGD engine name" in r.json()["error"]
    assert not PrivacySpend.objects.exists() and not EncryptedUpdate.objects.exists()
    # A good one: recorded (with its audit event, before the update's) and confirmed in the response.
    r = a.put_bytes(f"jobs/{ja}/update", encrypted_frame(a, study), headers={"X-Privacy-Spend": json.dumps(SPEND)})
    assert r.status_code == 201 and r.json()["privacy_spend_recorded"] is True
    ps = PrivacySpend.objects.get(job_id=ja)
    assert (ps.epsilon, ps.steps, ps.accountant_version, ps.dp_engine) == (0.4, 10, "opacus-1.6.0", "fused")
    actions = list(AuditEvent.objects.filter(study_id=study.pk, action__in=["privacy.spent", "update.accepted"])
                   .order_by("id").values_list("action", flat=True))
    assert actions == ["privacy.spent", "update.accepted"]
    # Without the header the upload works as before and says no spend came with it.
    r = b.put_bytes(f"jobs/{jb}/update", encrypted_frame(b, study))
    assert r.status_code == 201 and r.json()["privacy_spend_recorded"] is False
    assert not PrivacySpend.objects.filter(job_id=jb).exists()


def test_train_item_leaves_out_an_aggregate_over_the_inline_limit(world, eager_celery, settings):
    run_setup(world)
    study, a, b = world["study"], world["a"], world["b"]
    codec = get_codec(study.encryption["codec"])
    rng = np.random.default_rng(4)
    for node in (a, b):
        frame = wire.pack_parts(codec.encrypt_update(node.secret, study.encryption,
                                                     rng.normal(0, 0.05, study.n_params), 50, rng))
        assert node.upload(job_of(node, study), frame).status_code == 201
    size = len(b"".join(b.get(f"studies/{study.pk}/rounds/1/aggregate").streaming_content))
    settings.NODE_INLINE_AGGREGATE_MAX_BYTES = size - 1
    (train,) = [i for i in a.work() if i["kind"] == "train"]
    assert train["round"] == 2 and "previous_aggregate" not in train
    settings.NODE_INLINE_AGGREGATE_MAX_BYTES = size
    (train,) = [i for i in a.work() if i["kind"] == "train"]
    assert train["previous_aggregate"]["round"] == 1


@pytest.mark.parametrize("codec_name", ["bfv-packed-raw-v1", "bfv-packed-v1"])
def test_large_model_is_aggregated_in_chunks_and_tampered_storage_is_caught(world, eager_celery, settings, codec_name):
    """Uploads of a model spanning several ciphertexts are indexed by chunk; each chunk is summed
    by its own task and the last assembles the aggregate. A stored upload changed on disk is
    caught by the chunk's hash, and the round falls back to the full check that rejects it.
    With bfv-packed-v1 (zstd-compressed parts) each upload has its own byte ranges."""
    from audit.models import AuditEvent
    from studies import services
    from studies.models import AggregateChunk, Round

    settings.AGGREGATE_CHUNK_PARTS = 1
    a, b = world["a"], world["b"]
    study = services.study_create(
        consortium=world["consortium"], name="chunked", hospitals=[a.hospital, b.hospital],
        schema=world["data"].schema, model_spec={"type": "mlp_classifier", "hidden": [128, 64]}, rounds=2,
        local_epochs=1, batch_size=32, learning_rate=0.1, privacy={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0},
        encryption={"codec": codec_name}, quorum=2, round_deadline_s=600, seed=6)
    services.study_open_recruitment(study=study, actor="test")
    run_setup({**world, "study": study})
    codec = get_codec(study.encryption["codec"])
    n_parts = codec.n_parts(study.encryption, study.n_params)
    assert n_parts == 2
    rng = np.random.default_rng(4)
    ua, ub = rng.normal(0, 0.05, study.n_params), rng.normal(0, 0.05, study.n_params)
    for node, u, n in ((a, ua, 200), (b, ub, 200)):
        frame = wire.pack_parts(codec.encrypt_update(node.secret, study.encryption, u, n, rng))
        assert node.upload(job_of(node, study), frame).status_code == 201
    ups = list(EncryptedUpdate.objects.filter(job__round__study=study))
    assert all(len(u.chunks) == 2 for u in ups)
    if codec_name == "bfv-packed-v1":  # compressed parts: the uploads' byte ranges differ, the part ranges agree
        assert ups[0].chunks[1][3] != ups[1].chunks[1][3]
    rnd = Round.objects.get(study=study, number=1)
    assert rnd.status == Round.Status.DONE
    assert sorted(AggregateChunk.objects.filter(round=rnd).values_list("index", flat=True)) == [0, 1]
    r = b.get(f"studies/{study.pk}/rounds/1/aggregate")
    res = codec.decrypt_aggregate(b.secret, study.encryption, wire.unpack_parts(b"".join(r.streaming_content)),
                                  study.n_params)
    assert res.n_contributors == 2
    # Stochastic rounding moves each weighted value by less than one step; weight = n / cap.
    desc = codec.describe(study.encryption)
    bound = desc["quant_step"] * study.encryption["weight_cap_samples"] / 200
    assert np.max(np.abs(res.mean_update - (ua + ub) / 2)) <= bound

    # Round 2: A's stored upload is altered in its second chunk before B's upload closes the round.
    frame = wire.pack_parts(codec.encrypt_update(a.secret, study.encryption, ua, 200, rng))
    assert a.upload(job_of(a, study), frame).status_code == 201
    upd = EncryptedUpdate.objects.get(job__round__study=study, job__round__number=2, job__hospital=a.hospital)
    path = Path(django_settings.MEDIA_ROOT) / upd.path
    data = bytearray(path.read_bytes())
    data[upd.chunks[1][2] + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    frame = wire.pack_parts(codec.encrypt_update(b.secret, study.encryption, ub, 200, rng))
    assert b.upload(job_of(b, study), frame).status_code == 201
    rnd2 = Round.objects.get(study=study, number=2, attempt=1)
    assert rnd2.status == Round.Status.FAILED
    ev = AuditEvent.objects.get(study_id=study.pk, action="update.rejected", hospital_id=a.hospital.pk)
    assert "changed on disk" in ev.data["reason"]
