"""At the API edge, numbers JSON cannot carry (NaN, Infinity, a literal beyond float range) are a 422
in the protocol's error form, in request bodies and in the X-Privacy-Spend header, before any
service (or the audit trail) sees them."""

from __future__ import annotations

import base64

import pytest
from audit_support import done_round_with_jobs
from rest_framework.test import APIClient

from audit.models import AuditEvent
from consortia.models import Consortium
from consortia.services import consortium_create, enrolment_token_create, hospital_create, node_enrol
from studies.models import PrivacySpend

# The node views manage their own database connections (as test_node_api.py): real transactions.
pytestmark = pytest.mark.django_db(transaction=True)
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]


@pytest.fixture
def node(postgres):
    h = hospital_create(consortium=Consortium.objects.first() or consortium_create(name="Edge"), name="Hospital N")
    _, token = enrolment_token_create(hospital=h)
    h, node_token = node_enrol(enrolment_token=token, public_key=base64.b64encode(b"\x02" * 32).decode(),
                               node_version="node-test-1")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {node_token}")
    return h, client


def assert_422(r, literal: str):
    assert r.status_code == 422, (literal, r.status_code, r.content)
    body = r.json()
    assert set(body) == {"error", "code"} and body["code"] == "invalid"
    assert "finite number" in body["error"], body


def test_non_finite_numbers_in_a_body_are_422(node):
    _, client = node
    for literal in NON_FINITE:
        r = client.post("/api/node/heartbeat", data=f'{{"node_version": "n", "status": {{"loss": {literal}}}}}',
                        content_type="application/json")
        assert_422(r, literal)
        r = APIClient().post("/api/node/enrol", data=f'{{"enrolment_token": "t", "public_key": "k", "x": [{literal}]}}',
                             content_type="application/json")
        assert_422(r, literal)


def test_big_finite_numbers_are_accepted(node):
    _, client = node
    r = client.post("/api/node/heartbeat", data='{"node_version": "n", "status": {"auc": 1e308, "z": -0.0}}',
                    content_type="application/json")
    assert r.status_code == 200, r.content


def test_malformed_json_is_still_a_400(node):
    _, client = node
    r = client.post("/api/node/heartbeat", data='{"node_version": ', content_type="application/json")
    assert r.status_code == 400 and r.json()["code"] == "parse_error"


def test_non_finite_numbers_in_the_privacy_spend_header_are_422(light_world, node):
    h, client = node
    _, (job,) = done_round_with_jobs(light_world["study"], [h], number=1)
    events = AuditEvent.objects.count()
    for literal in NON_FINITE:
        r = client.put(f"/api/node/jobs/{job.pk}/update", data=b"FLW1", content_type="application/octet-stream",
                       HTTP_X_PRIVACY_SPEND=f'{{"epsilon": {literal}, "delta": 1e-5}}')
        assert_422(r, literal)
    assert not PrivacySpend.objects.filter(job=job).exists() and AuditEvent.objects.count() == events
