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


def _platform_stack(connection, request, *, workers: int = 1, extra_env: dict | None = None):
    """A platform web server (gunicorn) and Celery workers (the first with beat) on the test
    database. Process logs are kept under test-output/logs/<test name>/."""
    from devstack.localstack import Stack, child_env, db_url_for_children

    env = child_env({"DATABASE_URL": db_url_for_children(connection), "REDIS_URL": os.environ["REDIS_URL"],
                     **(extra_env or {})})
    log_dir = OUTPUT / "logs" / request.node.name
    shutil.rmtree(log_dir, ignore_errors=True)
    s = Stack(log_dir=log_dir, env=env)
    started = [s.start_worker(name=f"worker{i + 1}" if i else "worker", beat=i == 0, wait=False)
               for i in range(workers)]  # they start while the web server does
    s.start_web()
    for w in started:
        s.wait_ready(w)
    return s


def _wait_for_children_to_disconnect(connection, timeout: float = 15.0) -> None:
    """After the stack's processes exit, PostgreSQL ends their sessions asynchronously: wait until
    the test database has no session but this one, so it can be flushed (and dropped at the end)."""
    deadline = time.monotonic() + timeout
    while True:
        with connection.cursor() as cur:
            cur.execute("SELECT pid, application_name, state, backend_start, left(query, 120) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            others = cur.fetchall()
        if not others or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if others:
        print(f"sessions still open on the test database after the stack stopped: {others}")


def _running_stack(connection, request, **kwargs):
    """Body of the stack fixtures: start the processes, hand them to the test, stop them and wait
    until their database sessions are gone."""
    s = _platform_stack(connection, request, **kwargs)
    yield s
    s.stop_all()
    _wait_for_children_to_disconnect(connection)


@pytest.fixture
def web_only(require_postgres_redis, request):
    """Only the platform web server (gunicorn, fresh process) on the test database."""
    yield from _running_stack(require_postgres_redis, request, workers=0)


@pytest.fixture
def chunked_stack(require_postgres_redis, request):
    """Two Celery workers, aggregation split into one-ciphertext chunks."""
    yield from _running_stack(require_postgres_redis, request, workers=2,
                              extra_env={"FEDPLATFORM_AGGREGATE_CHUNK_PARTS": "1"})


@pytest.fixture
def ddp_stack(require_postgres_redis, request):
    """The stack with short secure-aggregation stage times (distributed-DP studies)."""
    yield from _running_stack(require_postgres_redis, request, extra_env={"FEDPLATFORM_SECAGG_STAGE_S": "15"})


@pytest.fixture
def stack(require_postgres_redis, request):
    """A platform web server (gunicorn) and a Celery worker (with beat) on the test database."""
    yield from _running_stack(require_postgres_redis, request)


# Under pytest-xdist (`make test` runs two workers, `--dist loadgroup`) the tests that start real
# processes run in two groups: the fault suite (its private PostgreSQL and Redis are session
# fixtures, started once) and the platform stacks (integration + browser). A group runs on one
# worker, serially; xdist hands out the largest units first, so the two groups start at once on the
# two workers, at most two studies run side by side, and the unit tests fill in around them.
_GROUPS = {"faults": "faults", "integration": "stack", "browser": "stack"}


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        group = _GROUPS.get(Path(str(item.path)).relative_to(REPO / "tests").parts[0])
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
