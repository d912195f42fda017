"""One fault scenario: a fresh database in the private cluster, the platform's processes (gunicorn
web, Celery worker with beat) pointed at it and at the private Redis, a consortium of hospitals
with a study in recruitment, and their node daemons; plus the controls a test needs to hurt them
and the reads it needs to wait on the outcome."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from private_services import PrivatePostgres, PrivateRedis
from psycopg.rows import dict_row

# TODO(integrator): H3 moves these modules to devstack/ (localstack.py, demo_data.py).
from devstack.demo_data import breast_cancer_split
from devstack.localstack import REPO, Proc, Stack, child_env, free_port, write_node_config

OPS = Path(__file__).resolve().parent / "platform_ops.py"
HOSPITALS = ["Alpha Hospital", "Beta Hospital", "Gamma Hospital"]
# Long enough local training (~450 DP-SGD steps) for a test to act while a node is inside a job.
SLOW_JOB = {"local_epochs": 30, "batch_size": 8}
TEMPLATE_DB = "fedfaults_template"
_db_numbers = itertools.count(1)


class World:
    """The private PostgreSQL and Redis of the suite, and a migrated template database each
    scenario copies (CREATE DATABASE ... TEMPLATE: a file copy, not a second migrate)."""

    def __init__(self, data_dir: Path):
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis()
        try:
            # The hospitals' data, shared by every scenario (the nodes only read it).
            data = breast_cancer_split(data_dir, HOSPITALS)
            self.data_file = data_dir / "data.json"
            self.data_file.write_text(json.dumps({"schema": data.schema,
                                                  "csvs": {n: str(p) for n, p in data.hospital_csvs.items()}}))
            self.pg.start()
            self.redis.start()
            self.pg.execute(f"CREATE DATABASE {TEMPLATE_DB}")
            env = child_env({"DATABASE_URL": self.pg.url(TEMPLATE_DB), "REDIS_URL": self.redis.url()})
            r = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=str(REPO), env=env,
                               capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise RuntimeError(f"migrate into the private cluster failed:\n{r.stdout}\n{r.stderr}")
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        self.redis.destroy()
        self.pg.destroy()


class Scenario:
    def __init__(self, world: World, work: Path, log_dir: Path):
        self.world = world
        self.pg: PrivatePostgres = world.pg
        self.redis: PrivateRedis = world.redis
        self.work = work
        self.t0 = time.monotonic()
        self.dbname = f"fedfaults_{os.getpid()}_{next(_db_numbers)}"
        self.pg.execute(f"CREATE DATABASE {self.dbname} TEMPLATE {TEMPLATE_DB}")
        self.redis.flushall()
        self.env = child_env({"DATABASE_URL": self.pg.url(self.dbname), "REDIS_URL": self.redis.url(),
                              "FEDPLATFORM_RECONCILE_S": "1", "FEDPLATFORM_MEDIA_ROOT": str(work / "media"),
                              "HOSPITAL_NODE_TORCH_THREADS": "1"})
        self.stack = Stack(log_dir=log_dir, env=self.env)
        self.web: Proc | None = None
        self.worker: Proc | None = None
        self._restarts = itertools.count(1)
        self.info: dict = {}
        self.configs: dict[int, Path] = {}
        self.nodes: dict[int, list[Proc]] = {}
        self._conn: psycopg.Connection | None = None

    # ------------------------------------------------------------------ platform processes

    def start(self, *, nodes: int | None = None, env: dict[str, str] | None = None, **study) -> None:
        """The platform's processes, a consortium with a study in recruitment and its hospitals'
        nodes enrolled, all started side by side (the nodes warm up while the web server starts);
        with `nodes` None every node runs and this returns once the study runs, else only the
        first `nodes` nodes start. `env`: platform settings of this scenario (FEDPLATFORM_*)."""
        self.env.update(env or {})
        port = free_port()
        self.stack.base_url = f"http://127.0.0.1:{port}"
        setup = self._setup_process(**study)
        self.worker = self.stack.start_worker(wait=False)
        web_error: list[BaseException] = []
        web = threading.Thread(target=self._start_web, args=(port, web_error), name="start-web")
        web.start()
        self._finish_setup(setup)
        self.start_nodes(self.hospital_ids[:nodes])
        web.join()
        if web_error:
            raise web_error[0]
        self.stack.wait_ready(self.worker)
        self.mark("platform and nodes started")
        if nodes is not None:
            return
        self.wait_running()
        self.mark("study running")

    def _start_web(self, port: int, errors: list[BaseException]) -> None:
        try:
            self.web = self.stack.start_web(port=port)
        except BaseException as exc:  # re-raised by start() in the test's thread
            errors.append(exc)

    def kill_web(self) -> None:
        """kill -9 the web server's whole process group (gunicorn master and its worker)."""
        _killpg(self.web)

    def freeze_web(self) -> None:
        """SIGSTOP the web server: connections are accepted by the kernel, nothing answers."""
        os.killpg(self.web.popen.pid, signal.SIGSTOP)

    def restart_web(self) -> None:
        port = int(self.stack.base_url.rsplit(":", 1)[1])
        self.web = self.stack.start_web(port=port)  # same address: the nodes' configs name it

    def kill_worker(self) -> None:
        _killpg(self.worker)

    def restart_worker(self) -> None:
        self.worker = self.stack.start_worker(name=f"worker-r{next(self._restarts)}")

    def platform_procs(self) -> list[Proc]:
        return [p for p in (self.web, self.worker) if p is not None]

    # ------------------------------------------------------------------ consortium, study, nodes

    def _setup_process(self, *, rounds: int = 3, quorum: int = 2, deadline: int = 60, local_epochs: int = 1,
                       batch_size: int = 32) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(OPS), "setup", "--out", str(self.work / "hospitals"),
                                 "--url", self.stack.base_url, "--data", str(self.world.data_file), "--rounds", str(rounds),
                                 "--quorum", str(quorum), "--deadline", str(deadline), "--local-epochs",
                                 str(local_epochs), "--batch-size", str(batch_size)],
                                cwd=str(REPO), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _finish_setup(self, setup: subprocess.Popen) -> None:
        """Read the set-up's result and write each enrolled node's config next to its credentials."""
        out, err = setup.communicate(timeout=300)
        self.mark("set-up done")
        if setup.returncode != 0:
            raise RuntimeError(f"platform set-up failed:\n{out}\n{err}")
        self.info = json.loads(out.strip().splitlines()[-1])
        for h in self.info["hospitals"]:
            self.configs[h["id"]] = write_node_config(self.work / "hospitals" / h["node_dir"] / "node.toml",
                                                      base_url=self.stack.base_url, csv=Path(h["csv"]),
                                                      max_epsilon=5.0, poll_wait_s=10)

    def mark(self, what: str) -> None:
        """Phase timings, printed with the test's output (pytest -rP shows them for passing tests)."""
        print(f"[{time.monotonic() - self.t0:6.1f}s] {what}", flush=True)

    @property
    def study_id(self) -> int:
        return self.info["study_id"]

    @property
    def hospital_ids(self) -> list[int]:
        return [h["id"] for h in self.info["hospitals"]]

    def start_node(self, hid: int) -> Proc:
        procs = self.nodes.setdefault(hid, [])
        p = self.stack.start_node(f"h{hid}-{len(procs) + 1}", self.configs[hid])
        procs.append(p)
        return p

    def start_nodes(self, hids: list[int] | None = None) -> None:
        for hid in hids if hids is not None else self.hospital_ids:
            self.start_node(hid)

    def live_nodes(self) -> list[Proc]:
        return [p for procs in self.nodes.values() for p in procs if p.alive()]

    @staticmethod
    def pause(proc: Proc) -> None:
        """SIGSTOP one process (a long scheduling pause, a stalled disk); resume() continues it."""
        os.kill(proc.popen.pid, signal.SIGSTOP)

    @staticmethod
    def resume(proc: Proc) -> None:
        os.kill(proc.popen.pid, signal.SIGCONT)

    def kill_node(self, hid: int) -> None:
        for p in self.nodes.get(hid, []):
            _killpg(p)

    def stop_nodes(self) -> list[Proc]:
        """SIGTERM every live node (each finishes its step and exits); wait with wait_stopped."""
        live = self.live_nodes()
        for p in live:  # once: a second SIGTERM makes a node exit at once (code 143)
            p.popen.send_signal(signal.SIGTERM)
        return live

    @staticmethod
    def wait_stopped(procs: list[Proc], timeout: float = 90) -> dict[str, int | str]:
        """Exit codes of processes told to stop."""
        codes: dict[str, int | str] = {}
        for p in procs:
            try:
                codes[p.name] = p.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[p.name] = f"still running {timeout:.0f} s after SIGTERM:\n{p.tail(20)}"
        return codes

    def stop_all(self) -> None:
        """Kill whatever is left (the invariant check already stopped the nodes cleanly)."""
        for p in self.stack.procs:
            if p.alive():
                os.killpg(p.popen.pid, signal.SIGCONT)  # a frozen process cannot die
                _killpg(p)
        if self._conn is not None:
            self._conn.close()

    # ------------------------------------------------------------------ reading the private database

    def q(self, sql: str, *args) -> list[dict]:
        """Rows of a query on the scenario's database; reconnects after a server restart."""
        for attempt in range(2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.pg.url(self.dbname), autocommit=True, row_factory=dict_row,
                                                 connect_timeout=5)
                return self._conn.execute(sql, args).fetchall()
            except psycopg.OperationalError:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def study(self) -> dict:
        return self.q("SELECT * FROM studies_study WHERE id = %s", self.study_id)[0]

    def custodian(self) -> int | None:
        return self.study()["custodian_id"]

    def rounds(self) -> list[dict]:
        return self.q("SELECT * FROM studies_round WHERE study_id = %s ORDER BY number, attempt", self.study_id)

    def round_status(self, number: int) -> str | None:
        rows = self.q("SELECT status FROM studies_round WHERE study_id = %s AND number = %s ORDER BY attempt DESC LIMIT 1",
                      self.study_id, number)
        return rows[0]["status"] if rows else None

    def finished(self) -> bool:
        s = self.study()
        if s["status"] in ("failed", "cancelled"):
            return True
        return s["status"] == "completed" and bool(
            self.q("SELECT 1 FROM studies_finalmodel WHERE study_id = %s", self.study_id))

    def ledger_jobs(self, hid: int) -> list[dict]:
        """The node's own ledger rows for this study's jobs (read-only; the node may be running)."""
        path = self.configs[hid].parent / "ledger.sqlite3"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM jobs WHERE study_id = ? ORDER BY job_id", (self.study_id,))]
        except sqlite3.OperationalError:
            return []  # tables not created yet
        finally:
            db.close()

    def in_job(self, number: int, states: tuple[str, ...] = ("claimed", "trained")) -> list[int]:
        """Hospitals whose node's ledger shows its job of round `number` in one of `states`
        (claimed/trained: training it; spend_recorded: uploading it)."""
        return [h for h in self.hospital_ids for j in self.ledger_jobs(h) if j["round"] == number and j["state"] in states]

    def node_log_lines(self, pattern: str) -> list[str]:
        """Lines of the node processes' logs that match the regular expression `pattern`."""
        rx = re.compile(pattern)
        return [line for procs in self.nodes.values() for p in procs
                for line in p.log_path.read_text(errors="replace").splitlines() if rx.search(line)]

    # ------------------------------------------------------------------ waiting

    def wait_for(self, predicate, timeout: float, what: str, *, watch: list[Proc] | None = None,
                 interval: float = 0.25):
        """Poll predicate() until truthy; fail at once if a watched process (default: the live
        nodes and platform processes) exits."""
        watch = [p for p in (watch if watch is not None else self.live_nodes() + self.platform_procs()) if p.alive()]
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            value = predicate()
            if value:
                return value
            dead = [p for p in watch if not p.alive()]
            if dead:
                raise AssertionError(f"{', '.join(p.name for p in dead)} exited while waiting for {what}\n"
                                     + "\n".join(f"--- {p.name} ---\n{p.tail(40)}" for p in dead))
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n" + self.describe(watch))

    def wait_running(self, timeout: float = 240) -> None:
        self.wait_for(lambda: self.study()["status"] in ("running", "failed", "completed"), timeout,
                      "the study to start running")

    def wait_finished(self, timeout: float = 300) -> dict:
        self.mark("waiting for the study to finish")
        self.wait_for(self.finished, timeout, "the study to finish and its model to be released")
        self.mark("study finished")
        return self.study()

    def describe(self, procs: list[Proc] | None = None) -> str:
        procs = procs if procs is not None else self.stack.procs
        state = ""
        try:
            s = self.study()
            state = f"study {s['status']} {s['status_reason']!r}; rounds " + ", ".join(
                f"{r['number']}.{r['attempt']}={r['status']}" for r in self.rounds())
        except psycopg.Error as exc:
            state = f"(database unreadable: {exc})"
        return state + "\n" + "\n".join(f"--- {p.name} ---\n{p.tail(25)}" for p in procs)


def _killpg(proc: Proc | None) -> None:
    """SIGKILL a process started by Stack.spawn and everything it started (its own session)."""
    if proc is None or not proc.alive():
        return
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.popen.wait(timeout=30)
