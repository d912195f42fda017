"""Every error answer of the node and researcher APIs is the protocol's JSON error, never Django's HTML page."""

from __future__ import annotations

import json

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)  # node views close their connection after each request


def assert_json_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.content[:300]
    assert resp["Content-Type"].startswith("application/json"), resp.content[:300]
    body = resp.json()
    assert set(body) == {"error", "code"}, body
    assert body["error"] and isinstance(body["error"], str)
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture
def client():
    return Client(raise_request_exception=False)


def test_unknown_api_url_is_a_json_404(client):
    assert_json_error(client.get("/api/no/such/thing"), 404, "not_found")
    assert_json_error(client.post("/api/node/no-such-endpoint", {}), 404, "not_found")


def test_unknown_portal_url_keeps_the_html_page(client):
    resp = client.get("/no/such/page/")
    assert resp.status_code == 404
    assert resp["Content-Type"].startswith("text/html")


def test_wrong_method_is_a_json_405(client):
    body = assert_json_error(client.delete("/api/node/enrol"), 405, "method_not_allowed")
    assert "DELETE" in body["error"]
    resp = client.post("/api/health/")  # a plain Django view (require_GET): an empty 405 before
    assert_json_error(resp, 405, "method_not_allowed")
    assert resp["Allow"] == "GET"


def test_unsupported_media_type_is_a_json_415(client):
    assert_json_error(client.post("/api/node/enrol", data=b"<x/>", content_type="application/xml"), 415,
                      "unsupported_media_type")


def test_oversize_body_is_a_json_413_before_it_is_read(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = json.dumps({"enrolment_token": "x" * 2000, "public_key": "k"})
    assert_json_error(client.post("/api/node/enrol", data=big, content_type="application/json"), 413, "too_large")
    form = {"enrolment_token": "x" * 2000, "public_key": "k"}
    assert_json_error(client.post("/api/node/enrol", data=form), 413, "too_large")  # multipart
    assert_json_error(client.post("/api/studies/", data=big, content_type="application/json"), 413, "too_large")


def test_malformed_json_is_a_json_400(client):
    assert_json_error(client.post("/api/node/enrol", data=b"{not json", content_type="application/json"), 400)


@pytest.mark.urls("api_errors_urls")
def test_unhandled_exception_is_a_json_500_under_api_only(client, caplog):
    body = assert_json_error(client.get("/api/boom"), 500, "server_error")
    assert "bug" not in body["error"]  # no internals in the answer; the traceback is in the log
    assert any("an unhandled bug" in str(r.exc_info) for r in caplog.records if r.exc_info)
    assert_json_error(client.get("/api/plain-boom"), 500, "server_error")
    resp = client.get("/plain-boom")
    assert resp.status_code == 500 and resp["Content-Type"].startswith("text/html")


def test_a_node_body_that_is_not_a_json_object_is_a_422(client):
    from nodeclient import enrol

    from consortia.services import consortium_create, hospital_create

    node = enrol(hospital_create(consortium=consortium_create(name="c"), name="h"))
    for body in ("[1, 2]", "true", '"text"', "3"):
        for path in ("heartbeat", "studies/1/decision", "jobs/1/refuse"):
            resp = node.client.post(f"/api/node/{path}", data=body, content_type="application/json")
            assert_json_error(resp, 422, "invalid")
