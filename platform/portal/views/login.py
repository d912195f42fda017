"""Sign in (throttled, audited: portal.auth) and sign out."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import login, logout
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from studies import access

from ..auth import attempt_login


@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request):
    nxt = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        nxt = ""
    error, status = "", 200
    if request.method == "POST":
        user, error = attempt_login(request, request.POST.get("username", ""), request.POST.get("password", ""))
        if user is not None:
            login(request, user)
            return redirect(nxt or settings.LOGIN_REDIRECT_URL)
        status = 429 if "locked" in error else 200
    return render(request, "portal/login.html", {"error": error, "next": nxt, "first_run": access.first_run_open(),
                                                 "username": request.POST.get("username", request.GET.get("username", ""))[:150]},
                  status=status)


@require_POST
def logout_view(request):
    logout(request)
    return redirect("portal:login")
