"""The platform survives its Celery broker (Redis) going away: real worker and web processes on a
redis-server of the test's own, restarted mid-flight."""

from __future__ import annotations

import logging
import re
import shutil
import time

import pytest
import requests
from celery import Celery, current_app
from redis_server import RedisServer

from devstack.localstack import Stack, child_env, db_url_for_children
from studies.outage import broker_state
from studies.services.common import CLOSE_ROUND, CLOSE_ROUND_AT_DEADLINE, enqueue

pytestmark = pytest.mark.integration


def _until(predicate, timeout: float, what: str, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.name} exited while waiting for {what}:\n{p.tail(60)}")
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                         + "\n".join(f"--- {p.name} ---\n{p.tail(30)}" for p in procs))


def _health(base_url: str) -> requests.Response | None:
    try:
        return requests.get(f"{base_url}/api/health/", timeout=10)
    except requests.RequestException:
        return None


@pytest.fixture
def own_redis(require_postgres_redis, output_dir, request):
    log_dir = output_dir / "logs" / request.node.name
    shutil.rmtree(log_dir, ignore_errors=True)
    server = RedisServer(log_dir).start()
    yield server, log_dir
    server.stop()


def test_worker_holding_a_delayed_task_survives_a_broker_restart(own_redis):
    server, log_dir = own_redis
    connection = pytest.importorskip("django.db").connection
    stack = Stack(log_dir=log_dir, env=child_env({"DATABASE_URL": db_url_for_children(connection),
                                                  "REDIS_URL": server.url()}))
    try:
        worker = stack.start_worker(beat=True)
        web = stack.start_web()
        _until(lambda: (r := _health(stack.base_url)) is not None and r.status_code == 200, 60,
               "health ok with a worker", [worker, web])
        # A round's deadline task waits in the worker, unacknowledged, until its countdown ends.
        app = Celery("fault-test", broker=server.url(), set_as_current=False)
        app.send_task(CLOSE_ROUND_AT_DEADLINE, args=(987654321,), countdown=250)
        _until(lambda: server.client().hlen("unacked") == 1, 30, "the worker to hold the delayed task", [worker])

        server.restart()  # every key is lost: the worst case

        # The worker reconnects (it used to exit: kombu's re-queue of the held message failed on the
        # dead connection, and Celery treated that as unrecoverable) and answers the health ping.
        _until(lambda: (r := _health(stack.base_url)) is not None and r.status_code == 200
               and r.json()["workers"] == "ok", 90, "the worker back after the broker restart", [worker, web])
        assert worker.alive()

        # Broker down: the health check names it.
        server.stop()
        body = _until(lambda: (r := _health(stack.base_url)) is not None and r.status_code == 503 and r.json(), 30,
                      "health to report the broker down", [web])
        assert body["down"] == ["broker", "workers"] and body["broker"].startswith("unreachable ("), body
        # Celery beat's reconciler runs every 2 s here: its failures are logged once, not a traceback each.
        beat_down = "the Celery broker unreachable: Celery beat cannot send scheduled tasks"
        _until(lambda: beat_down in worker.log_path.read_text(), 30, "beat to log the outage", [worker])
        # The consumer's third reconnection attempt comes 2 + 4 s after the outage began: beat ticked more.
        _until(lambda: "(3/None)" in worker.log_path.read_text(), 60, "more reconnection attempts", [worker])
        server.start()
        _until(lambda: (r := _health(stack.base_url)) is not None and r.status_code == 200, 90,
               "health ok again", [worker, web])
        _until(lambda: "the Celery broker reachable again after" in worker.log_path.read_text(), 30,
               "beat to log the end of the outage", [worker])
        log = worker.log_path.read_text()
        assert log.count("Celery beat cannot send") == 1 and "Message Error" not in log
        failed = int(re.search(r"reachable again after [0-9.]+ s \(([0-9]+) failed call", log).group(1))
        assert failed >= 2  # every failed tick after the first was folded into the two lines
    finally:
        stack.stop_all()


def test_enqueue_with_the_broker_down_logs_once_and_does_not_raise(own_redis, caplog):
    """An accepted upload's follow-up task must not turn the (committed) upload into a 500."""
    server, _ = own_redis
    previous = current_app._get_current_object()
    app = Celery("enqueue-test", set_as_current=True)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.update(broker_url=server.url(), task_always_eager=False, broker_transport="config.broker:RedisTransport")
    try:
        enqueue(CLOSE_ROUND, 1)
        assert server.client().llen("celery") == 1
        server.stop()
        caplog.set_level(logging.WARNING, logger="studies.outage")
        t0 = time.monotonic()
        for _ in range(3):
            enqueue(CLOSE_ROUND, 1)
        assert time.monotonic() - t0 < 30
        down = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down) == 1 and "studies.close_round" in down[0].getMessage()
        server.start()
        enqueue(CLOSE_ROUND, 1)
        assert server.client().llen("celery") == 1
        assert [r for r in caplog.records if "reachable again" in r.getMessage()]
        assert not broker_state.is_down
    finally:
        previous.set_current()
        app.close()
