"""Loaded first (`-p xdist_services` in pytest.ini), before pytest-django reads the settings: under
pytest-xdist each worker gets a Redis database of its own (REDIS_URL's number + the worker's index),
so one worker's Celery workers never consume the tasks another worker's tests enqueue, and a test
that flushes its Redis database does not empty the other worker's. PostgreSQL needs nothing:
pytest-django already gives each worker its own test database (test_<name>_gw<N>)."""

from __future__ import annotations

import os
import re


def _worker_redis_url(url: str, worker: str) -> str:
    index = int(worker.removeprefix("gw"))
    m = re.fullmatch(r"(rediss?://[^/]*)(?:/(\d+))?", url)
    if not m:
        raise SystemExit(f"REDIS_URL {url!r}: pytest-xdist needs a redis:// URL ending in a database number")
    db = int(m.group(2) or 0) + index
    if db > 15:
        raise SystemExit(f"REDIS_URL {url!r} with worker {worker}: Redis database {db} does not exist (0-15); "
                         "pick a lower database number in TEST_REDIS_URL")
    return f"{m.group(1)}/{db}"


_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and os.environ.get("REDIS_URL"):
    os.environ["REDIS_URL"] = _worker_redis_url(os.environ["REDIS_URL"], _worker)
