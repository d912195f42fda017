"""GET /api/health/: is this web process up and can it reach its database? For load balancers,
container health checks and the local stack's readiness wait. No authentication, no secrets, and no
schema generation (drf-spectacular's /api/schema/ is slow and was the readiness probe before)."""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from fedproto import PROTOCOL_VERSION, SOFTWARE_VERSION

log = logging.getLogger(__name__)


@never_cache
@require_GET
def health(request):
    body = {"software_version": SOFTWARE_VERSION, "protocol_version": PROTOCOL_VERSION}
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
    except DatabaseError as exc:
        log.warning("health check: the database is unreachable (%s)", exc.__class__.__name__)
        return JsonResponse({**body, "status": "unavailable", "database": f"unreachable ({exc.__class__.__name__})"},
                            status=503)
    return JsonResponse({**body, "status": "ok", "database": "ok"})
