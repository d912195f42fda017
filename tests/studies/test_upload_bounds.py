"""Bounded resources: the size of an encrypted update is known from the codec and the model, so a
Content-Length that cannot be this update is refused before a byte of the body is read, and no
ciphertext part longer than the codec's part size is ever read into memory."""

from __future__ import annotations

import io

import numpy as np
import pytest
from nodeclient import encrypted_frame, run_setup

from audit.models import AuditEvent
from fedproto import wire
from fedproto.codec import CODECS, get_codec
from fedproto.errors import CodecError
from studies import services
from studies.models import EncryptedUpdate, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)


class Untouchable(io.RawIOBase):
    """A request body that fails the test if anything reads it."""

    def read(self, n=-1):
        raise AssertionError("the request body was read")


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, n=-1):
        self.asked.append(n)
        return super().read(n)


def _job(node, study):
    (item,) = [i for i in node.work() if i["kind"] == "train"]
    return TrainingJob.objects.select_related("round__study").get(pk=item["job_id"])


@pytest.mark.parametrize("name", sorted(CODECS))
def test_update_size_bounds_every_real_update_and_is_exact_for_fixed_size_parts(name):
    codec = get_codec(name)
    enc = codec.validate_config({"codec": name})
    secret = codec.generate_secret(enc)
    for n_params in (7, 5000):
        rng = np.random.default_rng(n_params)
        frame = wire.pack_parts(codec.encrypt_update(secret, enc, rng.normal(0, 0.05, n_params), 50, rng))
        smallest, largest = codec.update_size(enc, n_params)
        assert smallest <= len(frame) <= largest
        if codec.part_bytes() is not None:
            assert smallest == largest == len(frame)
        assert all(len(p) <= codec.max_part_bytes() for p in wire.unpack_parts(frame))


@pytest.mark.parametrize("extra, status, code", [(1, 413, "too_large"), (None, 422, "wrong_size")])
def test_a_length_that_cannot_be_this_update_is_refused_before_a_byte_is_read(world, eager_celery, extra, status, code):
    run_setup(world)
    study, a = world["study"], world["a"]
    job = _job(a, study)
    smallest, largest = get_codec(study.encryption["codec"]).update_size(study.encryption, study.n_params)
    length = largest + extra if extra else smallest - 1
    with pytest.raises(services.ServiceError) as err:
        services.update_accept(job=job, hospital=a.hospital, stream=Untouchable(), content_length=length)
    assert (err.value.status, err.value.code) == (status, code)
    assert f"update is {length} bytes" in str(err.value) and "an update of this study's model" in str(err.value)
    ev = AuditEvent.objects.get(study_id=study.pk, action="update.rejected")
    assert ev.data["code"] == code
    assert TrainingJob.objects.get(pk=job.pk).status == TrainingJob.Status.DISPATCHED


def test_a_400_mb_content_length_is_answered_at_once_over_http(world, eager_celery):
    """The 1.2 GB of the issue: three 400 MB bodies were each read before anything was checked."""
    run_setup(world)
    study, a = world["study"], world["a"]
    job = _job(a, study)
    r = a.client.put(f"/api/node/jobs/{job.pk}/update", data=b"", content_type="application/octet-stream",
                     CONTENT_LENGTH=str(400 * 1024 ** 2))
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.content
    # The real update still goes in afterwards.
    assert a.upload(job.pk, encrypted_frame(a, study)).status_code == 201


def test_a_part_longer_than_the_codecs_part_size_is_refused_from_its_length_prefix(world, eager_celery):
    run_setup(world)
    study, a = world["study"], world["a"]
    job = _job(a, study)
    codec = get_codec(study.encryption["codec"])
    n = codec.n_parts(study.encryption, study.n_params)
    lying = wire.pack_parts([b""] * n)[:8] + wire.frame_part_header(codec.max_part_bytes() + 1) + b"\0" * 64
    r = a.put_bytes(f"jobs/{job.pk}/update", lying)
    assert r.status_code == 422 and f"more than the {codec.max_part_bytes()} allowed" in r.json()["error"], r.content
    assert not EncryptedUpdate.objects.exists()


def test_reading_a_frame_never_asks_for_more_than_the_part_limit():
    head = wire.pack_parts([b""])[:8]
    fh = CountingReader(head + wire.frame_part_header(10 ** 9) + b"\0" * 4096)
    assert wire.read_frame_header(fh) == 1
    with pytest.raises(CodecError, match="more than the 1000 allowed"):
        list(wire.iter_frame_parts(fh, 1, max_part_bytes=1000))
    assert max(fh.asked) <= 8
