"""The web process's health endpoint and its OpenAPI schema, served by a real gunicorn process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from fedproto import PROTOCOL_VERSION, SOFTWARE_VERSION

pytestmark = pytest.mark.integration
JSON_SCHEMA = {"Accept": "application/vnd.oai.openapi+json"}


def test_health_and_concurrent_first_schema_requests(web_only):
    r = requests.get(f"{web_only.base_url}/api/health/?scope=web", timeout=10)
    assert r.status_code == 200 and r.headers["Cache-Control"].startswith("max-age=0")
    assert r.json() == {"status": "ok", "database": "ok", "software_version": SOFTWARE_VERSION,
                        "protocol_version": PROTOCOL_VERSION}
    # No Celery worker runs here: nothing would move a study forward, and the full check says so.
    r = requests.get(f"{web_only.base_url}/api/health/", timeout=10)
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "down": ["workers"], "database": "ok", "broker": "ok",
                        "workers": "none answered", "software_version": SOFTWARE_VERSION,
                        "protocol_version": PROTOCOL_VERSION}
    # The first schema requests of a fresh process arrive together (drf-spectacular's generator is not
    # thread-safe: without the view's lock most of these answered 500).
    with ThreadPoolExecutor(6) as ex:
        answers = list(ex.map(lambda _: requests.get(f"{web_only.base_url}/api/schema/", headers=JSON_SCHEMA,
                                                     timeout=120), range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    assert len({a.content for a in answers}) == 1
    schema = answers[0].json()
    scheme = schema["components"]["securitySchemes"]["nodeToken"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "header" and scheme["name"] == "Authorization"
    assert {"nodeToken": []} in schema["paths"]["/api/node/work"]["get"]["security"]
    assert schema["paths"]["/api/node/enrol"]["post"]["security"] == [{}]  # enrolment needs no token
