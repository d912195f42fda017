"""The platform serves a distributed-DP round's secure-aggregation exchange over the node API, in
process: four enrolled hospitals drive real SecAggClients (JSON on the wire, real PyNaCl boxes)
against the stage endpoints, upload masked BFV ciphertexts (real TenSEAL) through the ordinary
upload path, one hospital dies after sharing its keys; the platform fixes the survivors at close,
computes the correction from their shares, aggregates, and a key holder decrypts the exact noised
sum of the survivors. Bad input gets the protocol's JSON error form and an audit event; a late
hospital cannot upload nor unmask."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from audit_support import SCHEMA
from nacl.public import SealedBox
from nodeclient import enrol

from audit.models import AuditEvent
from audit.selectors import verify_study_chain
from consortia.services import consortium_create, hospital_create
from fedproto import ddp_config, ddp_slots, wire
from fedproto.codec import get_codec
from fedproto.secagg import KeyDirectory, RoundSetup, SecAggClient, ShareInbox, UnmaskRequest
from hospital_node import ddp_update
from hospital_node.networks import initial_model
from studies import services
from studies.models import Round, SecAggRound, Study, TrainingJob
from studies.selectors import study_definition

pytestmark = pytest.mark.django_db(transaction=True)

DDP = {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "mode": "distributed", "collusion": 1}
ENC = {"codec": "bfv-packed-v1", "max_hospitals": 20, "quant_bits": 24}
DDP_SPEND = {"epsilon": 0.3, "delta": 1e-5, "noise_multiplier": 1.0, "sample_rate": 1.0, "steps": 1, "clip_norm": 1.0,
             "accountant": "ddg", "accountant_version": "test", "epsilon_round": 0.3, "dp_engine": "ddp"}


@pytest.fixture
def ddp_world(tmp_path, eager_celery):
    from django.core.cache import cache

    cache.clear()
    c = consortium_create(name="DDP API consortium")
    nodes = [enrol(hospital_create(consortium=c, name=f"H{i}")) for i in range(4)]
    study = services.study_create(
        consortium=c, name="ddp api", hospitals=[n.hospital for n in nodes], schema=SCHEMA,
        model_spec={"type": "logistic_regression"}, rounds=1, local_epochs=1, batch_size=16, learning_rate=0.1,
        privacy=DDP, encryption=ENC, quorum=3, round_deadline_s=600, seed=5)
    # The start refusal of distributed studies stands until the node daemons take part in the
    # exchange (tests/integration); this test drives the exchange itself, so it opens recruitment.
    Study.objects.filter(pk=study.pk).update(status=Study.Status.RECRUITING)
    study.refresh_from_db()
    for n in nodes:
        assert n.post(f"studies/{study.pk}/decision", {"decision": "approve"}).status_code == 200
    cust = nodes[0]
    codec = get_codec(ENC["codec"])
    cust.secret = codec.generate_secret(study.encryption)
    r = cust.post(f"studies/{study.pk}/context", {"codec": codec.name,
                                                  "public_params": base64.b64encode(codec.public_params(cust.secret)).decode()})
    assert r.status_code == 201, r.content
    keys = [{"hospital_id": n.hospital.pk, "sealed": base64.b64encode(SealedBox(n.key.public_key).encrypt(cust.secret)).decode()}
            for n in nodes[1:]]
    assert cust.post(f"studies/{study.pk}/sealed-keys", {"keys": keys}).status_code == 201
    sha = cust.get(f"studies/{study.pk}/context").json()["sha256"]
    for n in nodes[1:]:
        r = n.get(f"studies/{study.pk}/sealed-key")
        n.secret = SealedBox(n.key).decrypt(base64.b64decode(r.json()["sealed"]))
        assert n.post(f"studies/{study.pk}/key-ack", {"public_params_sha256": sha}).status_code == 200
    study.refresh_from_db()
    assert study.status == Study.Status.RUNNING
    return study, nodes


def stage(node, study, name):
    return f"studies/{study.pk}/rounds/1/secagg/{name}"


def exchange(study, nodes):
    """Setup, adverts, directory, shares, inboxes over the API: one SecAggClient per node."""
    clients = {}
    for n in nodes:
        r = n.get(stage(n, study, "setup"))
        assert r.status_code == 200, r.content
        body = r.json()
        setup = RoundSetup.from_dict(body["setup"])
        n.node_keys = {int(k): base64.b64decode(v) for k, v in body["node_keys"].items()}
        clients[n.hospital.pk] = SecAggClient(setup, n.hospital.pk, bytes(n.key))
    for i, n in enumerate(nodes):
        if i == 1:  # the directory waits for every hospital still in the round
            r = nodes[0].get(stage(n, study, "directory"))
            assert r.status_code == 409 and r.json()["code"] == "not_ready", r.content
        r = n.post(stage(n, study, "advert"), {"message": clients[n.hospital.pk].advert().to_dict()})
        assert r.status_code == 200, r.content
    for n in nodes:
        r = n.get(stage(n, study, "directory"))
        assert r.status_code == 200, r.content
        d = KeyDirectory.from_dict(r.json()["directory"])
        bundle = clients[n.hospital.pk].share(d, n.node_keys)
        r = n.post(stage(n, study, "shares"), {"message": bundle.to_dict()})
        assert r.status_code == 200, r.content
    for n in nodes:
        r = n.get(stage(n, study, "inbox"))
        assert r.status_code == 200, r.content
        clients[n.hospital.pk].receive(ShareInbox.from_dict(r.json()["inbox"]), n.node_keys)
    return clients


def test_a_round_with_a_hospital_dead_after_sharing_unmasks_the_survivors_exact_sum(ddp_world):
    study, nodes = ddp_world
    cfg = study_definition(study)
    rnd = Round.objects.get(study=study, number=1)
    # before the share exchange a node cannot upload: its masks could never be removed
    job0 = TrainingJob.objects.get(round=rnd, hospital=nodes[0].hospital)
    r = nodes[0].upload(job0.pk, b"\0" * 64, DDP_SPEND)
    assert r.status_code == 409 and r.json()["code"] == "secagg_not_shared", r.content
    clients = exchange(study, nodes)
    model = initial_model(cfg)
    plan, bounds = ddp_config.noise_plan(cfg), ddp_config.packing(cfg)
    expected = np.zeros(cfg.n_params, dtype=np.int64)
    codec = get_codec(ENC["codec"])
    rng = np.random.default_rng(0)
    for n in nodes[:3]:  # H3 shared its keys, then died before uploading
        X = rng.normal(size=(40, 6)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.float32)
        g, noise = ddp_update.noised_sum(cfg, model, X, y, plan, rng)
        expected += g + noise
        slots = ddp_slots.encode(g, noise, bounds, clients[n.hospital.pk].setup.vector_len)
        frame = wire.pack_parts(codec.encrypt_slots(n.secret, clients[n.hospital.pk].mask(slots)))
        job = TrainingJob.objects.get(round=rnd, hospital=n.hospital)
        r = n.upload(job.pk, frame, DDP_SPEND)
        assert r.status_code == 201, r.content
    # survivors are not fixed while the round collects
    r = nodes[0].get(stage(nodes[0], study, "unmask"))
    assert r.status_code == 409 and r.json()["code"] == "not_ready"
    services.round_try_close(round_id=rnd.pk, force_deadline=True)  # the deadline passes without H3
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.AGGREGATING and not hasattr(rnd, "aggregate")
    dead = nodes[3]
    # the late hospital: its upload is refused and it cannot unmask anyone
    job3 = TrainingJob.objects.get(round=rnd, hospital=dead.hospital)
    r = dead.upload(job3.pk, frame, DDP_SPEND)
    assert r.status_code == 409, r.content
    r = dead.get(stage(dead, study, "unmask"))
    assert r.status_code == 403 and r.json()["code"] == "not_survivor", r.content
    request = None
    for i, n in enumerate(nodes[:3]):
        r = n.get(stage(n, study, "unmask"))
        assert r.status_code == 200, r.content
        request = UnmaskRequest.from_dict(r.json()["request"])
        assert request.survivors == tuple(sorted(m.hospital.pk for m in nodes[:3]))
        resp = clients[n.hospital.pk].unmask(request)
        r = n.post(stage(n, study, "unmask"), {"message": resp.to_dict()})
        assert r.status_code == 200, r.content
        assert r.json()["unmasked"] is (i == 2)  # the threshold is 3
        if i == 0:  # no correction, no aggregate before the threshold is met
            assert nodes[0].get(stage(nodes[0], study, "correction")).status_code == 409
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.DONE
    r = nodes[1].get(f"studies/{study.pk}/rounds/1/aggregate")
    assert r.status_code == 200
    parts = wire.unpack_parts(b"".join(r.streaming_content))
    r = nodes[1].get(stage(nodes[1], study, "correction"))
    assert r.status_code == 200 and r["X-Survivors"] == ",".join(str(m.hospital.pk) for m in nodes[:3])
    correction = np.frombuffer(b"".join(r.streaming_content), dtype="<u8")
    total, _ = codec.decrypt_slots(nodes[1].secret, study.encryption, parts, codec.n_parts(study.encryption, study.n_params))
    sums = ddp_slots.decode_sum(total, correction, cfg.n_params, bounds, 3)
    assert sums.tolist() == expected.tolist()
    sa = SecAggRound.objects.get(round=rnd)
    assert (sa.u0, sa.u1, sa.u2) == ([n.hospital.pk for n in nodes],) * 2 + ([n.hospital.pk for n in nodes[:3]],)
    actions = list(AuditEvent.objects.filter(study_id=study.pk).values_list("action", flat=True))
    for a in ("secagg.setup", "secagg.advert", "secagg.directory", "secagg.shares", "secagg.inboxes",
              "secagg.survivors", "secagg.unmask_shares", "secagg.unmasked", "round.aggregated"):
        assert a in actions, a
    unmasked = AuditEvent.objects.get(study_id=study.pk, action="secagg.unmasked")
    assert unmasked.data["dropped"] == [dead.hospital.pk]
    assert verify_study_chain(study.pk).ok


def test_stage_endpoints_refuse_bad_input_with_the_json_error_form_and_audit_it(ddp_world):
    study, nodes = ddp_world
    a, b = nodes[0], nodes[1]
    setup = RoundSetup.from_dict(a.get(stage(a, study, "setup")).json()["setup"])
    ca = SecAggClient(setup, a.hospital.pk, bytes(a.key))
    cases = [
        (a.post(stage(a, study, "advert"), {"message": "x"}), 422, "invalid"),
        (a.post(stage(a, study, "advert"), {"nothing": 1}), 422, "invalid"),
        (a.post(stage(a, study, "advert"), {"message": {"kind": "secagg.advert", "protocol": "pickle"}}), 422,
         "secagg_refused"),
        (b.post(stage(b, study, "advert"), {"message": ca.advert().to_dict()}), 422, "secagg_refused"),  # A's advert
        (a.post(stage(a, study, "advert"), {"message": {**ca.advert().to_dict(), "pad": "x" * 4000}}), 413, "too_large"),
        (a.post(stage(a, study, "shares"), {"message": {}}), 422, "secagg_refused"),  # before the directory
        (a.get(stage(a, study, "inbox")), 409, "not_ready"),
        (a.get(f"studies/{study.pk}/rounds/9/secagg/setup"), 404, "not_found"),
    ]
    for r, status, code in cases:
        assert r.status_code == status, r.content
        body = r.json()
        assert body["code"] == code and isinstance(body["error"], str) and body["error"], body
    refused = AuditEvent.objects.filter(study_id=study.pk, action="secagg.refused")
    assert refused.count() == 6  # the envelope and size refusals too
    assert {e.data["stage"] for e in refused} == {"advert", "shares"}
    # a repeated advert is idempotent; a different one is refused
    assert a.post(stage(a, study, "advert"), {"message": ca.advert().to_dict()}).status_code == 200
    assert a.post(stage(a, study, "advert"), {"message": ca.advert().to_dict()}).status_code == 200
    other = SecAggClient(setup, a.hospital.pk, bytes(a.key)).advert().to_dict()
    r = a.post(stage(a, study, "advert"), {"message": other})
    assert r.status_code == 422 and "different mask key" in r.json()["error"]
    # an unauthenticated request never reaches a stage
    from rest_framework.test import APIClient
    r = APIClient().get(f"/api/node/{stage(a, study, 'setup')}")
    assert r.status_code == 401 and "error" in r.json()
    assert verify_study_chain(study.pk).ok


def test_the_directory_closes_with_the_quorum_after_the_stage_time(ddp_world, settings):
    study, nodes = ddp_world
    settings.SECAGG_STAGE_S = 1
    setup = RoundSetup.from_dict(nodes[0].get(stage(nodes[0], study, "setup")).json()["setup"])
    for n in nodes[:3]:
        c = SecAggClient(setup, n.hospital.pk, bytes(n.key))
        assert n.post(stage(n, study, "advert"), {"message": c.advert().to_dict()}).status_code == 200
    assert nodes[0].get(stage(nodes[0], study, "directory")).status_code == 409
    SecAggRound.objects.filter(round__study=study).update(created_at=Round.objects.get(study=study).opened_at.replace(
        year=2000))
    r = nodes[0].get(stage(nodes[0], study, "directory"))
    assert r.status_code == 200, r.content
    assert len(r.json()["directory"]["adverts"]) == 3
    r = nodes[3].get(stage(nodes[3], study, "directory"))
    assert r.status_code == 409 and r.json()["code"] == "sat_out"
    c3 = SecAggClient(setup, nodes[3].hospital.pk, bytes(nodes[3].key))
    r = nodes[3].post(stage(nodes[3], study, "advert"), {"message": c3.advert().to_dict()})
    assert r.status_code == 409 and r.json()["code"] == "stage_closed"


def test_a_stalled_unmask_stage_fails_the_attempt_after_the_stage_time_and_the_round_is_retried(ddp_world, settings):
    """Three survivors, threshold 3, only two answer: the round waits out the stage time (nothing
    happens before), then the reconciler fails the attempt with a reason naming the count, and the
    study opens attempt 2 of the round. A round that did unmask is never failed this way."""
    from studies.tasks import reconcile

    study, nodes = ddp_world
    settings.SECAGG_STAGE_S = 60
    cfg = study_definition(study)
    rnd = Round.objects.get(study=study, number=1)
    clients = exchange(study, nodes)
    bounds = ddp_config.packing(cfg)
    codec = get_codec(ENC["codec"])
    for n in nodes[:3]:  # H3 dies after sharing
        slots = ddp_slots.encode(np.zeros(cfg.n_params, dtype=np.int64), np.zeros(cfg.n_params, dtype=np.int64), bounds,
                                 clients[n.hospital.pk].setup.vector_len)
        frame = wire.pack_parts(codec.encrypt_slots(n.secret, clients[n.hospital.pk].mask(slots)))
        r = n.upload(TrainingJob.objects.get(round=rnd, hospital=n.hospital).pk, frame, DDP_SPEND)
        assert r.status_code == 201, r.content
    services.round_try_close(round_id=rnd.pk, force_deadline=True)
    for n in nodes[:2]:  # the third survivor never answers
        request = UnmaskRequest.from_dict(n.get(stage(n, study, "unmask")).json()["request"])
        r = n.post(stage(n, study, "unmask"), {"message": clients[n.hospital.pk].unmask(request).to_dict()})
        assert r.status_code == 200 and r.json()["unmasked"] is False, r.content
    assert reconcile()["unmask_failed"] == 0  # within the stage time the round waits
    assert not services.unmask_fail_stalled(round_id=rnd.pk)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.AGGREGATING
    SecAggRound.objects.filter(round=rnd).update(u2_at=SecAggRound.objects.get(round=rnd).u2_at.replace(year=2000))
    assert reconcile()["unmask_failed"] == 1
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.FAILED
    assert rnd.status_reason.startswith("unmask stage stalled: 2 of the 3 survivors") and "threshold is 3" in rnd.status_reason
    ev = AuditEvent.objects.get(study_id=study.pk, action="round.failed")
    assert ev.data["stage"] == "unmask" and ev.data["answered"] == sorted(n.hospital.pk for n in nodes[:2])
    # the study goes on: attempt 2 of round 1 opens with its own exchange; the failed attempt stays failed
    retry = Round.objects.get(study=study, number=1, attempt=2)
    assert retry.status in (Round.Status.OPEN, Round.Status.COLLECTING)
    assert SecAggRound.objects.filter(round=retry, u2__isnull=True).exists()
    assert not services.unmask_fail_stalled(round_id=rnd.pk) and reconcile()["unmask_failed"] == 0
    study.refresh_from_db()
    assert study.status == Study.Status.RUNNING
    assert verify_study_chain(study.pk).ok
