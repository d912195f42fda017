"""Fault injection, the hospitals' side: two node processes started on one config, a node (the
key custodian) gone for good. Real processes on the suite's private PostgreSQL and Redis; the
invariants of invariants.py checked after each (docs/faults.md)."""

from __future__ import annotations

import pytest
from invariants import check_invariants
from scenario import SLOW_JOB

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_a_second_node_process_on_one_config_exits_on_the_lock(scn):
    """Two processes on one ledger would both train and spend the same jobs (the ledger reached
    epsilon 3.11 against a budget of 3.0): the second exits at once on the node's single-instance
    lock, naming the process that holds it, and the first finishes the study alone."""
    scn.start(deadline=60, nodes=2, **SLOW_JOB)
    doubled = scn.hospital_ids[2]
    # The doubled hospital is not the key custodian: one of the two running nodes approves first.
    scn.wait_for(lambda: scn.custodian() is not None, 240, "a key custodian")
    first = scn.start_node(doubled)
    scn.wait_running()
    scn.wait_for(lambda: doubled in scn.in_job(1, ("claimed", "trained", "spend_recorded", "uploaded")), 240,
                 "the doubled hospital's node to take its round-1 job")
    second = scn.start_node(doubled)
    rc = second.popen.wait(timeout=120)
    log = second.log_path.read_text(errors="replace")
    assert rc == 1, f"the second process exited {rc}:\n{second.tail(20)}"
    assert f"another node process (pid {first.popen.pid}) is running on this ledger" in log, log[-2000:]
    assert first.alive()
    scn.wait_finished()
    check_invariants(scn)


def test_key_custodian_gone_for_good(scn):
    """The key custodian's node is killed after round 1 and never comes back. Later rounds do not
    wait for it once it is offline (no contact within FEDPLATFORM_NODE_ONLINE_WINDOW_S, 5 s here,
    shorter than the deadline): round 2 may wait its whole deadline (the node may have received
    that job before it died), round 3 must not. The study completes, and since only the
    custodian used to be asked to upload the final model, another key holder now releases it."""
    deadline = 20
    scn.start(deadline=deadline, env={"FEDPLATFORM_NODE_ONLINE_WINDOW_S": "5", "FEDPLATFORM_LONGPOLL_RECHECK_S": "1"})
    custodian = scn.custodian()
    scn.wait_for(lambda: scn.round_status(1) == "done", 240, "round 1 to finish", interval=0.005)
    scn.kill_node(custodian)  # never restarted
    scn.wait_for(lambda: scn.study()["status"] in ("completed", "failed", "cancelled"), 300, "the study to end")
    scn.wait_for(scn.finished, 60, "another key holder to release the final model")
    check_invariants(scn, gone=frozenset({custodian}))
    [r3] = [r for r in scn.rounds() if r["number"] == 3 and r["status"] == "done"]
    took = (r3["closed_at"] - r3["opened_at"]).total_seconds()
    assert took < deadline / 2, f"round 3 waited {took:.1f}s (deadline {deadline}s) for a node gone since round 1"
    [fm] = scn.q("SELECT uploaded_by_id FROM studies_finalmodel WHERE study_id = %s", scn.study_id)
    assert fm["uploaded_by_id"] not in (None, custodian), fm
