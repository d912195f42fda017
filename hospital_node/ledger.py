"""The node's local ledger (SQLite): privacy spend, job states, HE secrets, global models.

The ledger is the node's memory across restarts. Every multi-row change is one
transaction, and the privacy spend of a job is committed together with the job moving
to ``spend_recorded`` (after its encrypted frame is on disk, before any upload), so a
crash never loses or double-counts a spend.

Job states: claimed -> trained -> spend_recorded -> uploaded | failed (the spend travels with the
upload; spend_reported: reported on its own before the upload, as earlier versions did; a retried
round's job goes claimed -> spend_recorded with a zero-cost spend, see ``record_reuse``)
(also: refused is never stored — a refusal leaves the ledger unchanged). A job's state never moves
backwards: every UPDATE is conditional on the states it may come from (``PREVIOUS_STATES``), so
a stale writer (a second process, a late handler) changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fedproto.evaluation import DEFAULT_EVALUATION
from fedproto.study import StudyConfig

JOB_STATES = ("claimed", "trained", "spend_recorded", "spend_reported", "uploaded", "failed")
RESUMABLE_STATES = ("spend_recorded", "spend_reported")
# state -> the states a job may move to it from (claimed is only ever inserted, see claim_job)
PREVIOUS_STATES: dict[str, tuple[str, ...]] = {
    "trained": ("claimed",),
    "spend_recorded": ("claimed", "trained"),
    "spend_reported": ("spend_recorded",),
    "uploaded": ("spend_recorded", "spend_reported"),
    "failed": ("claimed", "trained", "spend_recorded", "spend_reported"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id        INTEGER PRIMARY KEY,
    config_json     TEXT NOT NULL,
    config_sha256   TEXT NOT NULL,
    noise_multiplier REAL,
    sample_rate     REAL,
    steps_per_job   INTEGER,
    n_train         INTEGER,
    target_epsilon  REAL,
    history_json    TEXT NOT NULL DEFAULT '[]',
    epsilon_spent   REAL NOT NULL DEFAULT 0,
    rounds_trained  INTEGER NOT NULL DEFAULT 0,
    he_secret       BLOB,
    public_params_sha256 TEXT,
    invitation_state TEXT,
    updated_at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id          INTEGER PRIMARY KEY,
    study_id        INTEGER NOT NULL,
    round           INTEGER NOT NULL,
    state           TEXT NOT NULL,
    spend_json      TEXT,
    frame_path      TEXT,
    error           TEXT,
    updated_at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS global_models (
    study_id        INTEGER NOT NULL,
    round           INTEGER NOT NULL,
    flat            BLOB NOT NULL,
    sha256          TEXT NOT NULL,
    PRIMARY KEY (study_id, round)
);
"""
# The update (float64 vector) of a study's last trained round: a retried attempt of that round
# re-sends a fresh encryption of it (post-processing, no new privacy cost) instead of training again.
_SCHEMA_TRAINED = """
CREATE TABLE IF NOT EXISTS trained_updates (
    study_id        INTEGER PRIMARY KEY,
    round           INTEGER NOT NULL,
    job_id          INTEGER NOT NULL,
    n_train         INTEGER NOT NULL,
    update_f8       BLOB NOT NULL
);
"""

# The local-only baseline of a study (trained once, at the final evaluation): its (sigma, q, steps)
# is in the study's history too (it spends the hospital's budget), its scores are reported.
_SCHEMA_BASELINE = """
CREATE TABLE IF NOT EXISTS baselines (
    study_id        INTEGER PRIMARY KEY,
    entry_json      TEXT NOT NULL,
    result_json     TEXT NOT NULL
);
"""

# The global statistics of a study (fedproto.statistics.derive of the decrypted round-0 sum): every
# hospital of the study derives the same constants from the same aggregate and prepares its data with them.
_SCHEMA_STATISTICS = """
CREATE TABLE IF NOT EXISTS statistics (
    study_id        INTEGER PRIMARY KEY,
    derived_json    TEXT NOT NULL,
    aggregate_sha256 TEXT NOT NULL
);
"""


def config_sha256(study: StudyConfig) -> str:
    """Hash of the parts of a study config that the privacy plan depends on (of its wire form, so
    ledgers written before StudyConfig existed keep matching; ``evaluation`` counts when it is not
    the default, so ledgers written before it existed keep matching too)."""
    wire = study.to_wire()
    keys = ("schema", "model", "rounds", "local_epochs", "batch_size", "learning_rate", "privacy",
            "encryption", "seed") + (("evaluation",) if wire["evaluation"] != DEFAULT_EVALUATION else ())
    return hashlib.sha256(json.dumps({k: wire[k] for k in keys}, sort_keys=True).encode()).hexdigest()


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA synchronous=FULL")
        if not self._has_tables():
            self._db.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); executescript commits itself
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name='trained_updates'").fetchone() is None:
            self._db.executescript(_SCHEMA_TRAINED)  # ledgers written before retries reused updates
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name='baselines'").fetchone() is None:
            self._db.executescript(_SCHEMA_BASELINE)  # ledgers written before local-only baselines
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name='statistics'").fetchone() is None:
            self._db.executescript(_SCHEMA_STATISTICS)  # ledgers written before federated statistics

    def _has_tables(self) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchone() is not None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ studies

    def study(self, study_id: int) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM studies WHERE study_id=?", (int(study_id),)).fetchone()

    def study_config(self, study_id: int) -> StudyConfig | None:
        """The study as last stored (its wire JSON, parsed again)."""
        row = self.study(study_id)
        return StudyConfig.from_wire(json.loads(row["config_json"])) if row else None

    def studies(self) -> list[sqlite3.Row]:
        return self._db.execute("SELECT * FROM studies ORDER BY study_id").fetchall()

    def remember_study(self, study: StudyConfig, *, invitation_state: str | None = None) -> None:
        """Insert or refresh the config of a study (does not touch its privacy state)."""
        now = time.time()
        with self.tx() as db:
            _upsert_study(db, study, now)
            if invitation_state is not None:
                db.execute("UPDATE studies SET invitation_state=? WHERE study_id=?",
                           (invitation_state, study.study_id))

    def history(self, study_id: int) -> list[tuple[float, float, int]]:
        row = self.study(study_id)
        if row is None:
            return []
        return [(float(s), float(q), int(n)) for s, q, n in json.loads(row["history_json"])]

    def set_secret(self, study_id: int, secret: bytes, public_sha256: str) -> None:
        with self.tx() as db:
            cur = db.execute("UPDATE studies SET he_secret=?, public_params_sha256=?, updated_at=? WHERE study_id=?",
                             (secret, public_sha256, time.time(), int(study_id)))
            if cur.rowcount != 1:
                raise KeyError(f"study {study_id} is not in the ledger")

    def secret(self, study_id: int) -> bytes | None:
        row = self.study(study_id)
        return bytes(row["he_secret"]) if row is not None and row["he_secret"] is not None else None

    # ------------------------------------------------------------------ jobs

    def job(self, job_id: int) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM jobs WHERE job_id=?", (int(job_id),)).fetchone()

    def jobs(self, study_id: int | None = None, states: tuple[str, ...] | None = None) -> list[sqlite3.Row]:
        q = "SELECT * FROM jobs WHERE 1=1"
        args: list[int | str] = []
        if study_id is not None:
            q += " AND study_id=?"
            args.append(int(study_id))
        if states:
            q += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(states)
        return self._db.execute(q + " ORDER BY job_id", args).fetchall()

    def claim_job(self, study: StudyConfig, job_id: int, round_no: int, plan: dict | None) -> bool:
        """Record a job as claimed; store the study's noise plan if this is its first job. True if the
        job is now ``claimed``; False if it already went further (never claimed again: it trained)."""
        now = time.time()
        with self.tx() as db:
            _upsert_study(db, study, now)
            if plan is not None:
                db.execute("UPDATE studies SET noise_multiplier=?, sample_rate=?, steps_per_job=?, n_train=?, "
                           "target_epsilon=?, config_sha256=? WHERE study_id=? AND noise_multiplier IS NULL",
                           (plan["noise_multiplier"], plan["sample_rate"], plan["steps_per_job"], plan["n_train"],
                            plan["target_epsilon"], config_sha256(study), study.study_id))
            db.execute("INSERT INTO jobs(job_id, study_id, round, state, updated_at) VALUES (?,?,?,?,?) "
                       "ON CONFLICT(job_id) DO UPDATE SET error=NULL, updated_at=excluded.updated_at "
                       "WHERE jobs.state='claimed'",
                       (int(job_id), study.study_id, int(round_no), "claimed", now))
            row = db.execute("SELECT state FROM jobs WHERE job_id=?", (int(job_id),)).fetchone()
            return row["state"] == "claimed"

    def set_job_state(self, job_id: int, state: str, *, error: str | None = None,
                      expect: tuple[str, ...] | None = None) -> bool:
        """Move a job to ``state`` if it is in one of the states it may come from (and in ``expect``,
        if given); False (nothing changed) otherwise: a job never moves backwards."""
        if state not in PREVIOUS_STATES:
            raise ValueError(f"a job cannot be moved to {state!r}")
        allowed = [s for s in PREVIOUS_STATES[state] if expect is None or s in expect]
        if not allowed:
            return False
        with self.tx() as db:
            q = f"UPDATE jobs SET state=?, error=?, updated_at=? WHERE job_id=? AND state IN ({','.join('?' * len(allowed))})"
            return db.execute(q, [state, error, time.time(), int(job_id), *allowed]).rowcount == 1

    def record_spend(self, job_id: int, study_id: int, entry: tuple[float, float, int], spend: dict,
                     frame_path: str, update: np.ndarray | None = None, n_train: int = 0,
                     training: bool = True) -> None:
        """Atomically: append the job's (sigma, q, steps) to the study history, set the cumulative
        epsilon, move the job to spend_recorded with its report and stored frame, and keep its
        ``update`` (if given) as the study's last trained round. ``training`` False: the statistics
        round's spend (not counted in rounds_trained)."""
        now = time.time()
        with self.tx() as db:
            job = db.execute("SELECT state, round FROM jobs WHERE job_id=?", (int(job_id),)).fetchone()
            if job is None or job["state"] not in PREVIOUS_STATES["spend_recorded"]:
                raise RuntimeError(f"job {job_id} is in state {job and job['state']!r}; its spend cannot be recorded again")
            row = db.execute("SELECT history_json FROM studies WHERE study_id=?", (int(study_id),)).fetchone()
            hist = json.loads(row["history_json"])
            hist.append([float(entry[0]), float(entry[1]), int(entry[2])])
            db.execute("UPDATE studies SET history_json=?, epsilon_spent=?, rounds_trained=rounds_trained+?, "
                       "updated_at=? WHERE study_id=?",
                       (json.dumps(hist), float(spend["epsilon"]), 1 if training else 0, now, int(study_id)))
            db.execute("UPDATE jobs SET state='spend_recorded', spend_json=?, frame_path=?, updated_at=? WHERE job_id=?",
                       (json.dumps(spend), frame_path, now, int(job_id)))
            if update is not None:
                db.execute("INSERT OR REPLACE INTO trained_updates(study_id, round, job_id, n_train, update_f8) "
                           "VALUES (?,?,?,?,?)", (int(study_id), int(job["round"]), int(job_id), int(n_train),
                                                  np.asarray(update, dtype="<f8").tobytes()))

    def record_reuse(self, job_id: int, spend: dict, frame_path: str) -> None:
        """A retried round's job re-sends the stored update: move it claimed -> spend_recorded with its
        zero-cost spend report; the study's history and epsilon are not touched."""
        with self.tx() as db:
            n = db.execute("UPDATE jobs SET state='spend_recorded', spend_json=?, frame_path=?, updated_at=? "
                           "WHERE job_id=? AND state='claimed'", (json.dumps(spend), frame_path, time.time(), int(job_id)))
            if n.rowcount != 1:
                raise RuntimeError(f"job {job_id} is not claimed; its reuse cannot be recorded")

    def trained_update(self, study_id: int) -> dict[str, Any] | None:
        """The study's last trained round: {"round", "job_id", "n_train", "update"} or None."""
        row = self._db.execute("SELECT * FROM trained_updates WHERE study_id=?", (int(study_id),)).fetchone()
        if row is None:
            return None
        return {"round": int(row["round"]), "job_id": int(row["job_id"]), "n_train": int(row["n_train"]),
                "update": np.frombuffer(row["update_f8"], dtype="<f8").copy()}

    def record_baseline(self, study_id: int, entry: tuple[float, float, int], epsilon: float,
                        result: dict[str, Any]) -> dict[str, Any]:
        """Atomically: append the local-only baseline's (sigma, q, steps) to the study's history, set
        the cumulative epsilon, keep its ``result``. Once per study: a second call changes nothing
        and returns the first result."""
        with self.tx() as db:
            old = db.execute("SELECT result_json FROM baselines WHERE study_id=?", (int(study_id),)).fetchone()
            if old is not None:
                return json.loads(old["result_json"])
            row = db.execute("SELECT history_json FROM studies WHERE study_id=?", (int(study_id),)).fetchone()
            hist = json.loads(row["history_json"])
            hist.append([float(entry[0]), float(entry[1]), int(entry[2])])
            db.execute("UPDATE studies SET history_json=?, epsilon_spent=?, updated_at=? WHERE study_id=?",
                       (json.dumps(hist), float(epsilon), time.time(), int(study_id)))
            db.execute("INSERT INTO baselines(study_id, entry_json, result_json) VALUES (?,?,?)",
                       (int(study_id), json.dumps(list(entry)), json.dumps(result)))
        return result

    def baseline(self, study_id: int) -> dict[str, Any] | None:
        """The study's local-only baseline result (record_baseline), or None."""
        row = self._db.execute("SELECT result_json FROM baselines WHERE study_id=?", (int(study_id),)).fetchone()
        return json.loads(row["result_json"]) if row else None

    def put_statistics(self, study_id: int, derived: dict[str, Any], aggregate_sha256: str) -> dict[str, Any]:
        """Keep the study's global statistics (once: a second call returns the first, so a node never
        prepares its data with two sets of constants in one study)."""
        with self.tx() as db:
            old = db.execute("SELECT derived_json FROM statistics WHERE study_id=?", (int(study_id),)).fetchone()
            if old is not None:
                return json.loads(old["derived_json"])
            db.execute("INSERT INTO statistics(study_id, derived_json, aggregate_sha256) VALUES (?,?,?)",
                       (int(study_id), json.dumps(derived, sort_keys=True), aggregate_sha256))
        return derived

    def statistics(self, study_id: int) -> dict[str, Any] | None:
        """The study's global statistics (put_statistics), or None."""
        row = self._db.execute("SELECT derived_json FROM statistics WHERE study_id=?", (int(study_id),)).fetchone()
        return json.loads(row["derived_json"]) if row else None

    # ------------------------------------------------------------------ global models

    def put_global_model(self, study_id: int, round_no: int, flat: np.ndarray, sha256: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO global_models(study_id, round, flat, sha256) VALUES (?,?,?,?)",
                       (int(study_id), int(round_no), np.asarray(flat, dtype="<f8").tobytes(), sha256))

    def global_model(self, study_id: int, round_no: int) -> tuple[np.ndarray, str] | None:
        row = self._db.execute("SELECT flat, sha256 FROM global_models WHERE study_id=? AND round=?",
                               (int(study_id), int(round_no))).fetchone()
        if row is None:
            return None
        return np.frombuffer(row["flat"], dtype="<f8").copy(), row["sha256"]

    def latest_global_round(self, study_id: int, at_most: int) -> int:
        row = self._db.execute("SELECT MAX(round) AS r FROM global_models WHERE study_id=? AND round<=?",
                               (int(study_id), int(at_most))).fetchone()
        return int(row["r"]) if row and row["r"] is not None else -1

    # ------------------------------------------------------------------ summary

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for s in self.studies():
            cfg = json.loads(s["config_json"])
            last = self._db.execute("SELECT job_id, round, state, error FROM jobs WHERE study_id=? "
                                    "ORDER BY round DESC, job_id DESC LIMIT 1", (s["study_id"],)).fetchone()
            out.append({"study_id": s["study_id"], "name": cfg.get("name", ""),
                        "epsilon_spent": s["epsilon_spent"], "epsilon_budget": cfg["privacy"]["epsilon"],
                        "target_epsilon": s["target_epsilon"], "delta": cfg["privacy"]["delta"],
                        "noise_multiplier": s["noise_multiplier"], "rounds_trained": s["rounds_trained"],
                        "rounds": cfg.get("rounds"), "has_key": s["he_secret"] is not None,
                        "invitation": s["invitation_state"],
                        "last_job": dict(last) if last else None})
        return out


def _upsert_study(db: sqlite3.Connection, study: StudyConfig, now: float) -> None:
    db.execute("INSERT INTO studies(study_id, config_json, config_sha256, updated_at) VALUES (?,?,?,?) "
               "ON CONFLICT(study_id) DO UPDATE SET config_json=excluded.config_json, updated_at=excluded.updated_at "
               "WHERE studies.config_json != excluded.config_json",
               (study.study_id, json.dumps(study.to_wire(), sort_keys=True), config_sha256(study), now))
