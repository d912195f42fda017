"""Log an outage of a backing service (the broker, the work-signal Redis) once when it starts, with
its cause, and once when it ends, instead of a traceback per failed call (dozens a minute)."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class OutageLog:
    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._failures = 0

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    def down(self, context: str, exc: BaseException) -> None:
        with self._lock:
            self._failures += 1
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning("%s unreachable: %s (%s: %s); logged once until it is back", self.what, context,
                    exc.__class__.__name__, exc)

    def up(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted, failures = time.monotonic() - self._down_since, self._failures
            self._down_since, self._failures = None, 0
        log.warning("%s reachable again after %.1f s (%d failed call(s) meanwhile)", self.what, lasted, failures)


broker_state = OutageLog("the Celery broker")
worksignal_state = OutageLog("the work-signal store")


class BeatOutageFilter(logging.Filter):
    """Celery beat logs a full traceback each time it cannot send a scheduled task (the reconciler,
    every few seconds) while the broker is down: keep the first, as one line, in broker_state."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or exc.__class__.__name__ != "SchedulingError":
            return True
        broker_state.down("Celery beat cannot send scheduled tasks", exc.__cause__ or exc)
        return False
