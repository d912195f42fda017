"""The web server's connection pool drops connections that PostgreSQL closed (a restart, a failover,
an administrator's pg_terminate_backend) before handing them to a request: no error once the
database is back."""

from __future__ import annotations

import time

import pytest
import requests
from django.db import connection

pytestmark = pytest.mark.integration


def _terminate_web_connections() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'fedplatform-web'")
        return cur.fetchone()[0]


def _web_connections() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'fedplatform-web'")
        return cur.fetchone()[0]


def test_requests_after_the_database_closed_the_pool_connections_succeed(web_only):
    url = f"{web_only.base_url}/api/health/?scope=web"
    for _ in range(4):
        assert requests.get(url, timeout=10).status_code == 200
    end = time.monotonic() + 30
    while _web_connections() < 2:  # the pool's minimum, open and idle
        assert time.monotonic() < end, "the web pool never opened its connections"
        time.sleep(0.05)
    assert _terminate_web_connections() >= 2
    t0 = time.monotonic()
    answers = [requests.get(url, timeout=10) for _ in range(8)]
    assert time.monotonic() - t0 < 5
    assert [r.status_code for r in answers] == [200] * 8, [r.text[:200] for r in answers]
