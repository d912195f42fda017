"""Django's PostgreSQL backend, whose connection pool checks a connection before lending it and,
on the first dead one, drops every dead idle connection at once.

After a PostgreSQL restart every idle pooled connection is dead. Without a check each failed one
request (HTML 500s); with psycopg's standard check the pool finds them one at a time and sleeps
with an exponential backoff between them (1 s, 2 s, 4 s...), so a request waited 10-26 s. Here the
first dead connection has the pool check all its idle ones (discarding the dead, opening new ones),
so the next try gets a fresh connection after the check loop's first pause (about 1 s).

Django builds the pool itself and always passes its own `check`, so the check is installed on the
pool it built (`settings.py` selects this backend for the web process's pool)."""

from __future__ import annotations

import functools
import logging

import psycopg
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        pool = super().pool
        if pool is not None and not getattr(pool, "_sweeps_dead_connections", False):
            pool._check = functools.partial(_check_and_sweep, pool)  # psycopg_pool keeps the check here
            pool._sweeps_dead_connections = True
        return pool


def _check_and_sweep(pool: ConnectionPool, conn: psycopg.Connection) -> None:
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error as exc:
        log.warning("a pooled database connection is dead (%s): checking every idle one", exc.__class__.__name__)
        pool.check()
        raise
