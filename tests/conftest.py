"""Shared test set-up. Real parts: PostgreSQL (DATABASE_URL), Redis (REDIS_URL), real processes.

`make test` sets DATABASE_URL and REDIS_URL. Media and var folders live under test-output/.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OUTPUT = Path(os.environ.get("TEST_OUTPUT_DIR", REPO / "test-output")).resolve()
# One folder per pytest session: sessions running side by side must not share uploads.
_RUN = OUTPUT / "run" / str(os.getpid())
shutil.rmtree(_RUN, ignore_errors=True)
(_RUN / "media").mkdir(parents=True, exist_ok=True)
os.environ.setdefault("FEDPLATFORM_VAR_DIR", str(_RUN / "var"))
os.environ["FEDPLATFORM_MEDIA_ROOT"] = str(_RUN / "media")
os.environ.setdefault("FEDPLATFORM_RECONCILE_S", "2")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_RUN, ignore_errors=True)


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


@pytest.fixture
def require_postgres_redis(transactional_db):
    """Integration tests need the real services that `make test` points at."""
    from django.db import connection

    if connection.vendor != "postgresql" or not os.environ.get("REDIS_URL"):
        pytest.fail("integration tests need PostgreSQL and Redis: run them with `make test` "
                    "(it sets DATABASE_URL and REDIS_URL and starts both if they are down)")
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    return connection


@pytest.fixture
def stack(require_postgres_redis, request):
    """A platform web server (gunicorn) and a Celery worker (with beat) on the test database.
    Process logs are kept under test-output/logs/<test name>/."""
    from studies.localstack import Stack, child_env, db_url_for_children

    env = child_env({"DATABASE_URL": db_url_for_children(require_postgres_redis),
                     "REDIS_URL": os.environ["REDIS_URL"]})
    log_dir = OUTPUT / "logs" / request.node.name
    shutil.rmtree(log_dir, ignore_errors=True)
    s = Stack(log_dir=log_dir, env=env)
    s.start_web()
    s.start_worker()
    yield s
    s.stop_all()
    # Let the children's connections close before the test database is flushed.
    time.sleep(0.5)
