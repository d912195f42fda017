"""Every error answer under /api/ is the protocol's JSON error {"error": "...", "code": "..."}.

DRF views already answer their own errors in that form (studies/api/errors.py). What reaches
Django itself does not: an unknown URL (404), an unhandled exception (500), a body over
DATA_UPLOAD_MAX_MEMORY_SIZE (Django's RequestDataTooBig, a 400 "Bad Request" page), a wrong method
on a plain Django view (405 with an empty body). The handlers below (wired in config/urls.py) and
the middleware turn those into JSON for /api/ paths; the portal and the audit pages keep Django's
HTML pages.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

log = logging.getLogger(__name__)

API_PREFIX = "/api/"

# A reason for each status Django may answer on its own, said the way the API says it.
_MESSAGES = {
    400: ("the request is malformed", "bad_request"),
    401: ("authentication required", "not_authenticated"),
    403: ("your role does not allow this", "forbidden"),
    404: ("no such API endpoint or object (or not visible to you): see /api/schema/", "not_found"),
    405: ("method not allowed on this endpoint: see /api/schema/", "method_not_allowed"),
    411: ("send a Content-Length header", "length_required"),
    413: ("the request body is too large", "too_large"),
    415: ("unsupported media type: send application/json", "unsupported_media_type"),
}


def is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def json_error(message: str, code: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message, "code": code}, status=status)


def too_large() -> JsonResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return json_error(f"the request body is larger than this endpoint accepts ({limit} bytes): send a smaller body",
                      "too_large", 413)


def _is_json(response: HttpResponse) -> bool:
    """A JSON answer is the view's own (the API's error form, or /api/health/'s 503 body): kept as it is."""
    return response.get("Content-Type", "").startswith("application/json")


def _for_status(status: int) -> JsonResponse:
    if status >= 500:
        return json_error("internal error: the platform could not handle this request; it has been logged",
                          "server_error", status)
    message, code = _MESSAGES.get(status, ("the request was refused", "error"))
    return json_error(message, code, status)


def bad_request(request, exception, template_name="400.html"):
    if not is_api(request):
        return defaults.bad_request(request, exception, template_name)
    if isinstance(exception, RequestDataTooBig):
        return too_large()
    return json_error(f"the request is malformed: {exception}" if str(exception) else _MESSAGES[400][0], "bad_request", 400)


def permission_denied(request, exception, template_name="403.html"):
    if not is_api(request):
        return defaults.permission_denied(request, exception, template_name)
    return json_error(str(exception) or _MESSAGES[403][0], "forbidden", 403)


def page_not_found(request, exception, template_name="404.html"):
    if not is_api(request):
        return defaults.page_not_found(request, exception, template_name)
    return _for_status(404)


def server_error(request, template_name="500.html"):
    if not is_api(request):
        return defaults.server_error(request, template_name)
    return _for_status(500)


class ApiJsonErrorsMiddleware:
    """For /api/ paths: refuse a parsed body over DATA_UPLOAD_MAX_MEMORY_SIZE before the view reads it
    (DRF's parsers read the stream without Django's check; views that stream their body to disk declare
    no parsers and check their own limits), and give any error answer that is not JSON (Django's HTML
    pages, an empty 405) the JSON error form."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if is_api(request) and response.status_code >= 400 and not _is_json(response):
            replacement = _for_status(response.status_code)
            for header in ("Allow", "WWW-Authenticate", "Retry-After"):
                if header in response:
                    replacement[header] = response[header]
            return replacement
        return response

    def process_view(self, request, view_func, view_args, view_kwargs):
        if not is_api(request):
            return None
        view_class = getattr(view_func, "cls", None)
        if view_class is not None and not getattr(view_class, "parser_classes", True):
            return None  # streams its body (node updates, final model): checks its own size
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return json_error("Content-Length is not a number", "bad_request", 400)
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return too_large()
        return None
