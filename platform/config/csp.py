"""Content-Security-Policy on every HTML page (Django 5.2 has no built-in CSP).

Every script, stylesheet, image and font of the portal, the audit pages and the admin is served by
the platform itself, and the templates carry no inline script or style: a page may load only from
its own origin, so an injected <script> or style="" would not run even if escaping ever failed.
"""

from __future__ import annotations

POLICY = "; ".join([
    "default-src 'self'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "object-src 'none'",
])


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.get("Content-Type", "").startswith("text/html") and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = POLICY
        return response
