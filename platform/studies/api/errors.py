"""Every API error is {"error": "<what is wrong and how to fix it>", "code": "<slug>"} with a 4xx status."""

from __future__ import annotations

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_handler

from fedproto.errors import CodecError, SpecError

from ..services import ServiceError


def error(message: str, code: str, http_status: int) -> Response:
    return Response({"error": message, "code": code}, status=http_status)


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(v) for v in detail)
    return str(detail)


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        return error(str(exc), exc.code, exc.status)
    if isinstance(exc, (SpecError, CodecError)):
        return error(str(exc), "invalid", status.HTTP_422_UNPROCESSABLE_ENTITY)
    if isinstance(exc, (Http404, ObjectDoesNotExist)):
        return error("not found (or not visible to you)", "not_found", status.HTTP_404_NOT_FOUND)
    if isinstance(exc, PermissionDenied):
        return error(str(exc) or "your role does not allow this", "forbidden", status.HTTP_403_FORBIDDEN)
    if isinstance(exc, exceptions.APIException):
        resp = drf_handler(exc, context)
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "invalid"
        resp.data = {"error": _flatten(exc.detail), "code": code}
        return resp
    return None
