"""The CSRF failure page: says what happened and keeps what was typed.

A form whose CSRF token no longer matches (the session expired, the form was open in a tab for
hours, cookies were cleared) is not lost: the page lists what was sent and offers to send it again
with a fresh token. It only offers that for a request from the portal itself (same origin): a form
posted from another site gets the explanation and nothing to resend, so a forged request cannot
be turned into one click.
"""

from __future__ import annotations

from django.middleware import csrf
from django.shortcuts import render

# Fields never echoed back into a page.
SECRET_FIELDS = ("password", "csrfmiddlewaretoken", "token", "code")
RESENDABLE = {csrf.REASON_NO_CSRF_COOKIE, csrf.REASON_CSRF_TOKEN_MISSING}


def _same_origin(request) -> bool:
    site = request.META.get("HTTP_SEC_FETCH_SITE")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.META.get("HTTP_ORIGIN")
    return origin is None or origin == f"{request.scheme}://{request.get_host()}"


def _fields(request) -> tuple[list[tuple[str, str]], bool]:
    kept, dropped = [], False
    for name in request.POST:
        if any(s in name.lower() for s in SECRET_FIELDS):
            dropped = dropped or name != "csrfmiddlewaretoken"
            continue
        for value in request.POST.getlist(name)[:200]:
            kept.append((name[:100], value[:20000]))
    return kept[:500], dropped


def csrf_failure(request, reason: str = "", template_name: str = ""):
    resendable = (reason in RESENDABLE or reason.startswith("CSRF token from POST")) and _same_origin(request)
    fields, dropped = _fields(request) if resendable else ([], False)
    return render(request, "csrf_failure.html", {
        "resendable": resendable, "fields": fields, "dropped_secret": dropped, "action": request.path,
        "reason": reason}, status=403)
