"""Fault injection: real processes, a PostgreSQL and a Redis of the suite's own, and the
invariants of invariants.py checked after every scenario (docs/faults.md)."""

from __future__ import annotations

import pytest
from invariants import check_invariants
from scenario import SLOW_JOB

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_node_killed_mid_training_then_restarted(scn):
    scn.start(deadline=60, **SLOW_JOB)
    victim = scn.custodian()
    scn.wait_for(lambda: victim in scn.in_job(2), 240, "the custodian to be training its round-2 job",
                 interval=0.005)
    scn.kill_node(victim)
    [job] = [j for j in scn.ledger_jobs(victim) if j["round"] == 2]
    assert job["state"] in ("claimed", "trained"), job
    scn.start_node(victim)
    scn.wait_finished()
    status = scn.q("SELECT status FROM studies_trainingjob WHERE id = %s", job["job_id"])[0]["status"]
    assert status == "uploaded", f"the restarted node did not deliver its interrupted job ({status})"
    check_invariants(scn)


def test_postgres_restarted_mid_round(scn):
    scn.start(deadline=60, **SLOW_JOB)
    scn.wait_for(lambda: len(scn.in_job(2)) >= 2, 240, "two nodes to be training round 2", interval=0.005)
    scn.pg.restart()
    scn.wait_finished()
    check_invariants(scn)


def test_web_killed_mid_upload_then_restarted(scn):
    scn.start(deadline=60, **SLOW_JOB)
    # Freeze the web server while the nodes train their round-2 jobs: their uploads hang on it.
    # Kill it (kill -9) with the uploads in flight, then start it again on the same address.
    scn.wait_for(lambda: len(scn.in_job(2)) >= 2, 240, "two nodes to be training round 2", interval=0.005)
    scn.freeze_web()
    scn.wait_for(lambda: len(scn.in_job(2, ("spend_recorded",))) >= 2, 120,
                 "two nodes to be uploading to the frozen web server")
    scn.kill_web()
    scn.restart_web()
    scn.wait_finished()
    check_invariants(scn)
