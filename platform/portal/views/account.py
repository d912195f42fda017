"""A person's own account: the one-time password links (invitation, reset), the 'forgot your
password' page, and the personal API tokens for the researcher REST API."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from consortia import apitokens, people
from consortia.models import ApiToken, Membership

from .. import reveal
from ..mail import send_password_reset
from ..people_forms import ApiTokenForm, PasswordForm, ResetRequestForm

LINK_SESSION_KEY = "portal_password_link"


@never_cache
def password_set_link(request, token: str):
    """The link from the e-mail: its digest goes into the session and the browser moves to a page
    whose address holds no secret (so it is not in the history or a Referer)."""
    request.session[LINK_SESSION_KEY] = people.link_digest(token)
    return redirect("portal:password_set")


@never_cache
@require_http_methods(["GET", "POST"])
def password_set(request):
    digest = request.session.get(LINK_SESSION_KEY, "")
    link = people.password_link_valid(digest)
    if link is None:
        return render(request, "portal/password_set.html", {"link": None}, status=410 if digest else 404)
    form = PasswordForm(request.POST or None, user=link.user)
    if request.method == "POST" and form.is_valid():
        try:
            user = people.password_set_with_link(digest=digest, password=form.cleaned_data["password1"])
        except people.PeopleError as exc:
            form.add_error(None, str(exc))
        except ValidationError as exc:
            form.add_error("password1", exc)
        else:
            request.session.pop(LINK_SESSION_KEY, None)
            if request.user.is_authenticated and request.user.pk != user.pk:
                logout(request)
            messages.success(request, f"Password set for {user.get_username()}. Sign in with it now.")
            return redirect(reverse("portal:login") + f"?username={user.get_username()}")
    return render(request, "portal/password_set.html", {"link": link, "form": form, "who": link.user},
                  status=422 if request.method == "POST" else 200)


@never_cache
@require_http_methods(["GET", "POST"])
def password_reset(request):
    form = ResetRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        found = people.password_reset_request(email=form.cleaned_data["email"])
        if found is not None:
            user, token = found
            problem = send_password_reset(request, user=user, token=token)
            if problem:  # said without revealing whether the address has an account
                messages.error(request, "The e-mail could not be sent right now: try again later, or ask your "
                                        "consortium admin.")
                return redirect("portal:password_reset")
        messages.info(request, "If an account has this address, a link to set a new password is on its way "
                               "(valid 2 hours, works once). Check your e-mail.")
        return redirect("portal:login")
    return render(request, "portal/password_reset.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
def account(request):
    user = request.user
    form = ApiTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            tok, clear = apitokens.api_token_create(user=user, name=form.cleaned_data["name"], days=form.days())
        except apitokens.ApiTokenError as exc:
            form.add_error(None, str(exc))
        else:
            key = reveal.stash(request, "api_token", clear)
            return redirect(reverse("portal:account") + f"?created={tok.pk}&reveal={key}")
    created, secret = None, None
    if request.GET.get("reveal"):
        secret = reveal.take(request, "api_token", request.GET["reveal"])
        created = ApiToken.objects.filter(user=user, pk=request.GET.get("created", "0")
                                          if str(request.GET.get("created", "")).isdigit() else 0).first()
    tokens = ApiToken.objects.filter(user=user).order_by("-created_at")[:50]
    roles = Membership.objects.filter(user=user).select_related("consortium", "hospital").order_by("consortium__name")
    resp = render(request, "portal/account.html", {
        "form": form, "tokens": tokens, "created": created, "secret": secret, "roles": roles,
        "reveal_asked": bool(request.GET.get("reveal")),
        "schema_url": reverse("schema"), "base": request.build_absolute_uri("/").rstrip("/")},
        status=422 if request.method == "POST" else 200)
    resp["Cache-Control"] = "no-store"
    return resp


@login_required
@require_POST
def api_token_revoke(request, token_id: int):
    tok = get_object_or_404(ApiToken, pk=token_id, user=request.user)   # someone else's token: 404
    with transaction.atomic():
        apitokens.api_token_revoke(token=tok, by=request.user)
    messages.success(request, f"Token '{tok.name}' ({tok.prefix}…) revoked: scripts using it get 401 now.")
    return redirect("portal:account")
