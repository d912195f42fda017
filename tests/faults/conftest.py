"""Fixtures of the fault-injection suite: a PostgreSQL cluster and a Redis server of its own
(started once per session, so tests may stop and restart them) and, per test, a scenario on a
fresh database copied from a migrated template. Process logs go to test-output/logs/faults/."""

from __future__ import annotations

import shutil

import pytest
from scenario import Scenario, World


@pytest.fixture(scope="session")
def fault_world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("fault-data"))
    yield world
    world.destroy()


@pytest.fixture
def scn(fault_world, tmp_path, output_dir, request):
    log_dir = output_dir / "logs" / "faults" / request.node.name
    shutil.rmtree(log_dir, ignore_errors=True)
    # A test that failed mid-fault may have left a service down or frozen: bring both back first.
    if not fault_world.pg.running():
        fault_world.pg.start()
    if fault_world.redis.proc is None:
        fault_world.redis.start()
    fault_world.redis.thaw()
    s = Scenario(fault_world, tmp_path, log_dir)
    yield s
    s.stop_all()
    s.mark("processes killed")
    if not fault_world.pg.running():
        fault_world.pg.start()
    fault_world.pg.execute(f"DROP DATABASE IF EXISTS {s.dbname} WITH (FORCE)")
    s.mark("database dropped")
