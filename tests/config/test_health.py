"""GET /api/health/ reports an unreachable database as 503, without details beyond the error class."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection
from django.test import Client


@pytest.mark.django_db
def test_health_says_when_the_database_is_unreachable():
    def refuse(execute, sql, params, many, context):
        raise OperationalError("connection to server at 10.0.0.9, port 5432 failed: password authentication")

    client = Client()
    assert client.get("/api/health/?scope=web").json()["status"] == "ok"
    with connection.execute_wrapper(refuse):
        r = client.get("/api/health/?scope=web")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and body["database"] == "unreachable (OperationalError)"
    assert "10.0.0.9" not in r.content.decode() and "password" not in r.content.decode()
