"""GET /api/health/: can the platform make progress? For load balancers, container health checks,
monitoring and the local stack's readiness wait. No authentication, no secrets (only error class
names), and no schema generation (drf-spectacular's /api/schema/ is slow).

- `database`: this web process reaches PostgreSQL.
- `broker`: this web process reaches the Celery broker (tasks it enqueues are delivered).
- `workers`: at least one Celery worker answers a ping (nothing moves a study forward without one).

200 `{"status": "ok", ...}` when all are ok; 503 `{"status": "unavailable", ...}` naming what is down.
`?scope=web` checks only this web process and its database (the readiness of a web container,
started before or without workers).
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from fedproto import PROTOCOL_VERSION, SOFTWARE_VERSION

from .celery import app as celery_app

log = logging.getLogger(__name__)

# A ping answered by the first worker returns at once; this bounds the wait when there is none.
WORKER_PING_TIMEOUT_S = 1.0


def _database() -> str:
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
    except DatabaseError as exc:
        log.warning("health check: the database is unreachable (%s)", exc.__class__.__name__)
        return f"unreachable ({exc.__class__.__name__})"
    return "ok"


def _broker() -> str:
    if celery_app.conf.task_always_eager:
        return "ok"  # in-process tasks (tests): no broker
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=2)
    except Exception as exc:  # noqa: BLE001 - any failure means tasks cannot be delivered
        return f"unreachable ({exc.__class__.__name__})"
    return "ok"


def _workers() -> str:
    if celery_app.conf.task_always_eager:
        return "ok"
    try:
        replies = celery_app.control.ping(timeout=WORKER_PING_TIMEOUT_S, limit=1)
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc.__class__.__name__})"
    return "ok" if replies else "none answered"


@never_cache
@require_GET
def health(request):
    checks = {"database": _database()}
    if request.GET.get("scope") != "web":
        checks["broker"] = _broker()
        checks["workers"] = _workers() if checks["broker"] == "ok" else "unknown (broker unreachable)"
    body = {"software_version": SOFTWARE_VERSION, "protocol_version": PROTOCOL_VERSION}
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        return JsonResponse({**body, "status": "unavailable", "down": down, **checks}, status=503)
    return JsonResponse({**body, "status": "ok", **checks})
