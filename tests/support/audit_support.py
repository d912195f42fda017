"""Helpers and fixtures of tests/audit (imported by name: every conftest module is called
`conftest`, so tests must not import from one).

Audit tests: PostgreSQL (the trigger is PostgreSQL's), real Opacus, real TenSEAL, real WeasyPrint."""

from __future__ import annotations

import base64
import io
from contextlib import contextmanager

import numpy as np
import pytest
from django.db import connection
from nacl.public import PrivateKey, SealedBox

from consortia.services import consortium_create, enrolment_token_create, hospital_create, node_enrol
from studies import services
from studies.models import Participation, PrivacySpend, Round, TrainingJob

SCHEMA = {"task": "binary_classification",
          "features": [{"name": f"f{i}", "type": "float"} for i in range(6)],
          "label": {"name": "y", "type": "binary"}}
NOISE, RATE, STEPS = 2.0, 0.05, 20


@pytest.fixture
def postgres(db):
    if connection.vendor != "postgresql":
        pytest.fail("audit tests need PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/test")
    return connection


@contextmanager
def trigger_disabled():
    """What an attacker with database-owner rights does before rewriting history."""
    with connection.cursor() as cur:
        cur.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_delete")
    try:
        yield
    finally:
        with connection.cursor() as cur:
            cur.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update_delete")


def enrolled(consortium, name):
    h = hospital_create(consortium=consortium, name=name)
    _, token = enrolment_token_create(hospital=h)
    key = PrivateKey.generate()
    h, _ = node_enrol(enrolment_token=token, public_key=base64.b64encode(bytes(key.public_key)).decode(),
                      node_version="node-test-1")
    h.key = key
    return h


def make_study(consortium, hospitals, *, name="audit study", rounds=2, quorum=2, accountant="rdp"):
    study = services.study_create(
        consortium=consortium, name=name, hospitals=hospitals, schema=SCHEMA,
        model_spec={"type": "logistic_regression"}, rounds=rounds, local_epochs=1, batch_size=16,
        learning_rate=0.1, privacy={"epsilon": 3.0, "delta": 1e-5, "clip_norm": 1.0, "accountant": accountant},
        encryption={"codec": "bfv-packed-v1"}, quorum=quorum, round_deadline_s=600, seed=7,
        purpose="Predict malignancy from six tumour features without pooling patient data.", actor="user:1:rita")
    services.study_open_recruitment(study=study, actor="user:1:rita")
    return study


def spend_for(history_len: int, *, accountant="rdp", delta=1e-5) -> dict:
    """The spend report a correct node sends after its history_len-th job."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(NOISE, RATE, STEPS)] * history_len
    return {"epsilon": acc.get_epsilon(delta=delta), "delta": delta, "noise_multiplier": NOISE, "sample_rate": RATE,
            "steps": STEPS, "clip_norm": 1.0, "accountant": accountant, "accountant_version": "1.6.0",
            "dp_engine": "fused"}


@pytest.fixture
def light_world(postgres):
    """A recruiting study with three invited hospitals (no encryption needed): A and B approve, C declines."""
    c = consortium_create(name="Audit consortium")
    hs = [enrolled(c, n) for n in ("Hospital A", "Hospital B", "Hospital C")]
    study = make_study(c, hs)
    ps = {p.hospital.name: p for p in Participation.objects.filter(study=study).select_related("hospital")}
    services.participation_decide(participation=ps["Hospital A"], decision="approve", actor="user:2:alice")
    services.participation_decide(participation=ps["Hospital B"], decision="approve", actor="user:3:bob")
    services.participation_decide(participation=ps["Hospital C"], decision="decline", actor="user:4:carol",
                                  reason="the ethics board has not reviewed it")
    study.refresh_from_db()
    return {"consortium": c, "hospitals": hs, "study": study}


def done_round_with_jobs(study, hospitals, number):
    """Test data: a completed round with one job per hospital (bypasses the encryption path)."""
    rnd = Round.objects.create(study=study, number=number, status=Round.Status.DONE)
    jobs = [TrainingJob.objects.create(round=rnd, hospital=h, status=TrainingJob.Status.UPLOADED) for h in hospitals]
    return rnd, jobs


@pytest.fixture
def eager_celery():
    from config.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def _frame(secret, study, seed):
    from fedproto import wire
    from fedproto.codec import get_codec

    codec = get_codec(study.encryption["codec"])
    rng = np.random.default_rng(seed)
    return wire.pack_parts(codec.encrypt_update(secret, study.encryption, rng.normal(0, 0.05, study.n_params), 100, rng))


def run_study_end_to_end():
    """A whole study through the platform's services with real TenSEAL and Opacus numbers:
    A, B, C approve (A is the key custodian), D declines; round 1: three updates, one rejected
    attempt; round 2: C refuses (budget), A and B upload; all attest; the model is released and
    downloaded. Needs a transactional test (on-commit tasks) with eager Celery."""
    from release_support import released_model

    from fedproto.codec import get_codec
    from studies.models import Study

    c = consortium_create(name="End-to-end consortium")
    a, b, cc, d = (enrolled(c, n) for n in ("Hospital A", "Hospital B", "Hospital C", "Hospital D"))
    study = make_study(c, [a, b, cc, d], name="Breast cancer e2e")
    parts = {p.hospital_id: p for p in Participation.objects.filter(study=study)}
    for h in (a, b, cc):
        services.participation_decide(participation=parts[h.pk], decision="approve", actor=f"user:9:admin-{h.name[-1]}",
                                      reason="approved by the data access committee")
    services.participation_decide(participation=parts[d.pk], decision="decline", actor="user:10:admin-D",
                                  reason="no capacity this quarter")
    study.refresh_from_db()
    codec = get_codec("bfv-packed-v1")
    secret = codec.generate_secret(study.encryption)
    ctx = services.he_context_publish(study=study, hospital=a, codec_name="bfv-packed-v1",
                                      public_params=codec.public_params(secret))
    services.sealed_keys_store(study=study, hospital=a, keys=[(h.pk, SealedBox(h.key.public_key).encrypt(secret))
                                                            for h in (b, cc)])
    for h in (b, cc):
        services.sealed_key_fetch(study=study, hospital=h)
        services.key_ack(study=study, hospital=h, public_params_sha256=ctx.sha256)
    study.refresh_from_db()
    assert study.status == Study.Status.RUNNING, study.status
    model = released_model(SCHEMA, weights={"linear.weight": np.zeros((1, 6), np.float32),
                                            "linear.bias": np.zeros(1, np.float32)})
    import hashlib

    hashes = {1: hashlib.sha256(b"round-1-model").hexdigest(), 2: hashlib.sha256(model).hexdigest()}
    for number in (1, 2):
        rnd = Round.objects.get(study=study, number=number, attempt=1)
        for i, h in enumerate((a, b, cc)):
            job = TrainingJob.objects.get(round=rnd, hospital=h)
            if number == 2 and h is cc:
                services.job_refuse(job=job, hospital=h, reason="this job would bring epsilon to 3.4 > budget 3.0",
                                    code="budget_exceeded")
                continue
            if number == 1 and h is b:  # a bad upload first: rejected with its reason, then the good one
                # The size of a real update, but a frame of 0 parts: refused for its part count.
                bad = b"FLW1" + b"\x00" * (codec.update_size(study.encryption, study.n_params)[0] - 4)
                with pytest.raises(services.ServiceError):
                    services.update_accept(job=job, hospital=h, stream=io.BytesIO(bad), content_length=len(bad))
            services.privacy_spend_record(job=job, hospital=h, spend=spend_for(number))
            frame = _frame(secret, study, seed=10 * number + i)
            services.update_accept(job=job, hospital=h, stream=io.BytesIO(frame), content_length=len(frame))
        rnd.refresh_from_db()
        assert rnd.status == Round.Status.DONE, (rnd.status, rnd.status_reason)
        for h in ((a, b, cc) if number == 1 else (a, b)):
            services.round_report_record(rnd=rnd, hospital=h, metrics={"auc": 0.9, "accuracy": 0.85}, n_test=40,
                                         model_sha256=hashes[number], epsilon_spent=None)
    study.refresh_from_db()
    assert study.status == Study.Status.COMPLETED, (study.status, study.status_reason)
    services.final_model_store(study=study, hospital=a, stream=io.BytesIO(model), content_length=len(model))
    study.refresh_from_db()
    services.final_model_downloaded(study=study, actor="user:1:rita")
    return {"consortium": c, "study": study, "hospitals": {"A": a, "B": b, "C": cc, "D": d}, "hashes": hashes}


def mark_uploaded_with_spend(job) -> None:
    """A job whose update arrived with its privacy spend (the platform aggregates no update without one)."""
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.UPLOADED)
    PrivacySpend.objects.create(job=job, **spend_for(1))
