"""A minimal node-protocol client for in-process API tests (the real daemon is hospital_node)."""

from __future__ import annotations

import base64
import json

import numpy as np
from nacl.public import PrivateKey, SealedBox
from rest_framework.test import APIClient

from consortia.services import enrolment_token_create
from fedproto.codec import get_codec

# A valid spend that costs nothing (a test client trains no model).
ZERO_SPEND = {"epsilon": 0.0, "delta": 1e-5, "noise_multiplier": 0.0, "sample_rate": 1.0, "steps": 0, "clip_norm": 1.0,
              "accountant": "rdp", "accountant_version": "test", "epsilon_round": 0.0, "dp_engine": "fused"}


class Node:
    """A minimal protocol client for tests (the real daemon is hospital_node)."""

    def __init__(self, hospital, token: str, key: PrivateKey):
        self.hospital, self.token, self.key = hospital, token, key
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        self.secret: bytes | None = None

    def get(self, path, **kw):
        return self.client.get(f"/api/node/{path}", **kw)

    def post(self, path, data=None):
        return self.client.post(f"/api/node/{path}", data or {}, format="json")

    def put_bytes(self, path, body: bytes, content_type="application/octet-stream", headers=None):
        return self.client.put(f"/api/node/{path}", data=body, content_type=content_type, headers=headers)

    def upload(self, job_id: int, frame: bytes, spend: dict | None = None):
        """PUT an update with its privacy spend (X-Privacy-Spend; by default a zero-cost one): the
        platform aggregates no update without its recorded spend."""
        return self.put_bytes(f"jobs/{job_id}/update", frame, headers={"X-Privacy-Spend": json.dumps(spend or ZERO_SPEND)})

    def work(self):
        r = self.get("work?wait=0")
        assert r.status_code == 200, r.content
        return r.json()["items"]


def enrol(hospital) -> Node:
    _, token = enrolment_token_create(hospital=hospital)
    key = PrivateKey.generate()
    r = APIClient().post("/api/node/enrol", {"enrolment_token": token,
                                              "public_key": base64.b64encode(bytes(key.public_key)).decode(),
                                              "node_version": "test"}, format="json")
    assert r.status_code == 201, r.content
    return Node(hospital, r.json()["node_token"], key)


def run_setup(world) -> None:
    """Approve, publish the context, relay and acknowledge keys: the study starts running."""
    study, a, b = world["study"], world["a"], world["b"]
    for n in (a, b):
        assert n.post(f"studies/{study.pk}/decision", {"decision": "approve"}).status_code == 200
    codec = get_codec(study.encryption["codec"])
    a.secret = codec.generate_secret(study.encryption)
    pub = codec.public_params(a.secret)
    r = a.post(f"studies/{study.pk}/context", {"codec": codec.name, "public_params": base64.b64encode(pub).decode()})
    assert r.status_code == 201, r.content
    sealed = SealedBox(b.key.public_key).encrypt(a.secret)
    r = a.post(f"studies/{study.pk}/sealed-keys", {"keys": [{"hospital_id": b.hospital.pk,
                                                             "sealed": base64.b64encode(sealed).decode()}]})
    assert r.status_code == 201, r.content
    r = b.get(f"studies/{study.pk}/sealed-key")
    b.secret = SealedBox(b.key).decrypt(base64.b64decode(r.json()["sealed"]))
    sha = r2 = b.get(f"studies/{study.pk}/context").json()["sha256"]
    del r2
    assert b.post(f"studies/{study.pk}/key-ack", {"public_params_sha256": sha}).status_code == 200


def encrypted_frame(node: Node, study, seed=0) -> bytes:
    from fedproto import wire

    codec = get_codec(study.encryption["codec"])
    rng = np.random.default_rng(seed)
    parts = codec.encrypt_update(node.secret, study.encryption, rng.normal(0, 0.05, study.n_params), 100, rng)
    return wire.pack_parts(parts)
