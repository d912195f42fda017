"""A cheap "work version": bumped after every committed state change, watched by the long-polls.

The node long-poll (api/node.py WorkView) used to recompute every item for its node on each
0.1 s tick: with hundreds of nodes that is hundreds of multi-query selectors a second. Now every
service transaction that records an audit event (every state change does) bumps a version *after
commit*: a node's own key when the change only concerns that node (its upload, its report, its
key acknowledgement...), the global key when it concerns a whole study (round opened, closed,
aggregated; study status). One watcher thread per web process reads the watched versions every
few milliseconds and wakes the waiting polls, which recompute only when theirs changed (plus a
slow safety recheck). Per-node keys matter: with one global version, each of 200 uploads would
wake all 200 polls (40 000 recomputations per round).

Storage: Redis (INCR) when REDIS_URL is set, shared by every web and worker process on every
machine; otherwise (the embedded single-machine default) a small file in FEDPLATFORM_VAR_DIR.
Reading it after the bump always sees the committed data, because the bump runs on commit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

from .outage import worksignal_state

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = settings.WORKSIGNAL_POLL_S  # FEDPLATFORM_WORKSIGNAL_POLL_S


def _prefix() -> str:
    db = settings.DATABASES["default"]
    return f"fedplatform:work:{db.get('HOST', '')}:{db.get('NAME', '')}:"


GLOBAL = "g"


def hospital_key(hospital_id: int) -> str:
    return f"h{int(hospital_id)}"


class _Backend:
    def __init__(self) -> None:
        self._redis = None
        self._dir: Path | None = None
        if settings.REDIS_URL:
            import redis

            self._redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        else:
            self._dir = Path(settings.VAR_DIR) / "work-signal"
            self._dir.mkdir(parents=True, exist_ok=True)

    def bump(self, keys: set[str]) -> None:
        if self._redis is not None:
            pipe = self._redis.pipeline(transaction=False)
            for k in keys:
                pipe.incr(_prefix() + k)
            pipe.execute()
            return
        for k in keys:
            path = self._dir / k
            tmp = self._dir / f".{k}.{os.getpid()}.{threading.get_ident()}"
            tmp.write_text(f"{time.time_ns()}:{os.getpid()}:{threading.get_ident()}")
            os.replace(tmp, path)

    def read(self, keys: list[str]) -> list[str]:
        if self._redis is not None:
            vals = self._redis.mget([_prefix() + k for k in keys])
            return [v.decode() if v else "0" for v in vals]
        out = []
        for k in keys:
            try:
                out.append((self._dir / k).read_text())
            except FileNotFoundError:
                out.append("0")
        return out


_backend: _Backend | None = None
_backend_lock = threading.Lock()


def _get_backend() -> _Backend:
    global _backend
    if _backend is None:
        with _backend_lock:
            if _backend is None:
                _backend = _Backend()
    return _backend


def bump(keys: set[str]) -> None:
    """Signal that work may have changed for ``keys`` (GLOBAL: every node; hospital_key(h): one
    node). Never raises: a lost bump only delays a poll to its safety recheck."""
    try:
        _get_backend().bump(keys)
    except Exception as exc:  # noqa: BLE001 - the signal is an optimisation, the database stays the truth
        worksignal_state.down("a work signal bump failed (polls fall back to their safety recheck)", exc)
    else:
        worksignal_state.up()
    _the_watcher.notify_local(keys)


def bump_on_commit(keys: set[str]) -> None:
    """Bump after the surrounding transaction commits, so a woken poll sees the change (dropped
    with the transaction or savepoint if it rolls back)."""
    keys = set(keys)
    transaction.on_commit(lambda: bump(keys))


class _Watcher:
    """One thread per process: reads the watched versions every WATCH_INTERVAL_S, wakes waiters."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.versions: dict[str, str] = {}
        self.watchers: dict[str, int] = {}
        self.local: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self.cond:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="work-signal", daemon=True)
                    self._thread.start()

    def _refresh(self) -> None:
        with self.cond:
            keys = [GLOBAL, *[k for k in self.watchers if k != GLOBAL]]
        try:
            vals = _get_backend().read(keys)
        except Exception as exc:  # noqa: BLE001 - polls fall back to their safety recheck
            worksignal_state.down("the watcher cannot read the work signal (polls fall back to their safety recheck)", exc)
            return
        worksignal_state.up()
        with self.cond:
            changed = False
            for k, v in zip(keys, vals):
                if self.versions.get(k) != v:
                    self.versions[k] = v
                    changed = True
            if changed:
                self.cond.notify_all()

    def _run(self) -> None:
        while True:
            self._refresh()
            time.sleep(WATCH_INTERVAL_S)

    def notify_local(self, keys) -> None:
        with self.cond:
            for k in keys:
                self.local[k] = self.local.get(k, 0) + 1
            self.cond.notify_all()

    def _state(self, key: str) -> tuple:
        return (self.versions.get(GLOBAL), self.versions.get(key), self.local.get(GLOBAL, 0), self.local.get(key, 0))

    def current(self, key: str) -> tuple:
        self._ensure_thread()
        with self.cond:
            if key not in self.versions:
                self.watchers[key] = self.watchers.get(key, 0)
        self._refresh()
        with self.cond:
            return self._state(key)

    def wait_change(self, key: str, seen: tuple, timeout: float) -> tuple:
        """Block until the global or this key's version differs from ``seen`` or ``timeout`` passes."""
        self._ensure_thread()
        end = time.monotonic() + timeout
        with self.cond:
            self.watchers[key] = self.watchers.get(key, 0) + 1
            try:
                while self._state(key) == seen:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
                return self._state(key)
            finally:
                self.watchers[key] -= 1
                if self.watchers[key] <= 0:
                    del self.watchers[key]


_the_watcher = _Watcher()


def current(key: str) -> tuple:
    return _the_watcher.current(key)


def wait_change(key: str, seen: tuple, timeout: float) -> tuple:
    return _the_watcher.wait_change(key, seen, timeout)
