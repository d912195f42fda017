"""Fault injection, the platform's own services: its Celery worker killed mid-aggregation, its
broker (Redis) restarted or stopped, its database (PostgreSQL) down for longer than a round
deadline. Real processes on the suite's private PostgreSQL and Redis; the invariants of
invariants.py checked after each (docs/faults.md)."""

from __future__ import annotations

import re

import pytest
from invariants import check_invariants
from scenario import SLOW_JOB

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _wait_round_open(scn, number: int) -> None:
    scn.wait_for(lambda: scn.round_status(number) is not None, 240, f"round {number} to open", interval=0.005)


def _no_upload_answered_5xx(scn) -> None:
    failed = scn.node_log_lines(r"PUT jobs/\d+/update -> 5\d\d")
    assert not failed, "uploads answered 5xx while only the broker was down:\n" + "\n".join(failed[:5])


def _closed(scn, number: int) -> str | None:
    status = scn.round_status(number)
    return status if status in ("aggregating", "done", "failed") else None


def test_worker_killed_mid_aggregation_then_restarted(scn):
    """The close_round task that was aggregating inline was acknowledged when it started, so
    nothing redelivers it to the restarted worker: the reconciler re-runs an aggregation closed
    more than FEDPLATFORM_AGGREGATION_GRACE_S ago (3 s here, so the scenario stays short)."""
    scn.start(deadline=60, env={"FEDPLATFORM_AGGREGATION_GRACE_S": "3"})
    caught = None
    for number in (1, 2, 3):
        status = scn.wait_for(lambda n=number: _closed(scn, n), 240, f"round {number} to close", interval=0.002)
        if status != "aggregating":
            continue
        scn.kill_worker()
        after = scn.round_status(number)
        scn.restart_worker()
        if after == "aggregating":
            caught = number
            break
    assert caught, "the worker finished every aggregation before it could be killed in one"
    scn.wait_for(lambda: scn.round_status(caught) != "aggregating", 60,
                 f"round {caught}'s aggregation to be redone by the restarted worker")
    scn.wait_finished()
    check_invariants(scn)
    assert "has been aggregating for" in scn.worker.log_path.read_text(), "the repair was not logged"


def test_redis_restarted_mid_round(scn):
    """The worker holds every open round's close_round_at_deadline as an unacknowledged ETA
    message when Redis restarts (it used to die restoring them on the lost connection)."""
    scn.start(deadline=60)
    _wait_round_open(scn, 2)  # the worker now holds the rounds' delayed close-at-deadline tasks
    scn.redis.restart()
    scn.wait_finished(timeout=120)
    check_invariants(scn)
    _no_upload_answered_5xx(scn)


def test_redis_stopped_for_30s(scn):
    """Uploads that arrive while the broker is down are accepted (201, not 500): the close task
    they enqueue on commit is logged as not sent and the reconciler closes the round."""
    scn.start(deadline=90, **SLOW_JOB)
    scn.wait_for(lambda: len(scn.in_job(2)) >= 2, 240, "two nodes to be training round 2", interval=0.005)
    scn.redis.stop_for(30)
    scn.wait_finished(timeout=120)
    check_invariants(scn)
    _no_upload_answered_5xx(scn)


def test_postgres_down_longer_than_a_round_deadline(scn):
    """The nodes hold their round-2 jobs (they train, record the spend, and cannot upload it)
    while PostgreSQL is down for longer than the round's deadline. The platform's deadlines do not
    run while it cannot reach its database: the first reconciler run after the gap extends them
    by it (round.deadline_extended), so the late uploads are taken and no round is retried."""
    deadline = 10  # the platform counts a gap over 10 s (5 reconciler intervals, at least 10 s) as away
    scn.start(deadline=deadline, **SLOW_JOB)
    scn.wait_for(lambda: len(scn.in_job(2)) >= 2, 240, "two nodes to be training round 2", interval=0.005)
    scn.pg.stop_for(deadline + 4, mode="immediate")
    scn.wait_finished()
    check_invariants(scn)
    assert [(r["number"], r["attempt"]) for r in scn.rounds()] == [(1, 1), (2, 1), (3, 1)], scn.describe([])
    extended = scn.q("SELECT data FROM audit_auditevent WHERE study_id = %s AND action = 'round.deadline_extended'",
                     scn.study_id)
    # The first reconciler run after the gap notices it and extends every round still collecting by
    # it. Round 2 is one, unless the nodes' held uploads (sent the moment PostgreSQL is back) completed
    # it first: either way its deadline passed during the outage without failing it, and it took all
    # three held updates.
    assert re.search(r"reconcile: the platform was away for \d+ s", scn.worker.log_path.read_text()), extended
    assert all(e["data"]["by_s"] >= deadline for e in extended if e["data"]["round"] == 2), extended
    round2 = scn.q("SELECT a.n_contributors FROM studies_aggregate a JOIN studies_round r ON r.id = a.round_id "
                   "WHERE r.study_id = %s AND r.number = 2", scn.study_id)
    assert [a["n_contributors"] for a in round2] == [3], round2
