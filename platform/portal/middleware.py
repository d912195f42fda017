"""Error answers that a plain Django view gives with an empty body (a 405 from require_POST, say)
get the portal's page, saying what to do next; /api/ keeps its JSON errors (config/apierrors.py)."""

from __future__ import annotations

from django.shortcuts import render

API_PREFIX = "/api/"


class ErrorPagesMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code == 405 and not response.content and not request.path.startswith(API_PREFIX):
            allowed = response.get("Allow", "")
            page = render(request, "405.html", {"allowed": allowed, "method": request.method}, status=405)
            if allowed:
                page["Allow"] = allowed
            return page
        return response
