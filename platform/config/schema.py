"""The OpenAPI schema view and the node-token security scheme it documents."""

from __future__ import annotations

import threading

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SCHEMA_KWARGS, SpectacularAPIView


class SchemaView(SpectacularAPIView):
    """drf-spectacular's schema view, generating one schema at a time: its generator is not thread-safe
    (tfranzel/drf-spectacular#1123, #1368). Under gunicorn's threads, concurrent first requests for
    /api/schema/ answered 500 ('NoneType' object has no attribute 'startswith') before this lock."""

    _lock = threading.Lock()

    @extend_schema(**SCHEMA_KWARGS)
    def get(self, request, *args, **kwargs):
        with self._lock:
            return super().get(request, *args, **kwargs)


class NodeTokenScheme(OpenApiAuthenticationExtension):
    """Documents studies.api.auth.NodeTokenAuthentication on the node protocol's endpoints."""

    target_class = "studies.api.auth.NodeTokenAuthentication"
    name = "nodeToken"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "'Token <node token>': the token a hospital node received at enrolment "
                               "(POST /api/node/enrol); see docs/PROTOCOL.md."}


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Documents studies.api.auth.ApiTokenAuthentication on the researcher endpoints."""

    target_class = "studies.api.auth.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "'Bearer <API token>': a personal token created in the portal (your account page); "
                               "it acts with your roles."}
