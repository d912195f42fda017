"""Hospital pages: the list (and creating a hospital), one hospital's page with its node status,
enrolment tokens and revocation."""

from __future__ import annotations

import json
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.services import actor_label
from consortia import services as consortia_services
from consortia.models import EnrolmentToken, Hospital, Membership
from consortia.people import display_name
from consortia.selectors import limits_summary, node_reported_limits
from studies import access
from studies.hospital_ledger import hospital_privacy_spend

from .. import reveal
from ..forms import HospitalForm
from ..people_forms import HospitalLimitsForm

Role = access.Role


def node_online(h: Hospital) -> bool:
    return (h.is_enrolled and h.last_heartbeat is not None
            and timezone.now() - h.last_heartbeat <= timedelta(seconds=settings.NODE_ONLINE_WINDOW_S))


def node_state(h: Hospital) -> str:
    if h.revoked_at is not None:
        return "revoked"
    if not h.token_hash:
        return "not enrolled"
    return "online" if node_online(h) else "offline"


@login_required
@require_http_methods(["GET", "POST"])
def hospitals(request):
    user = request.user
    admin_of = access.consortia_with_role(user, {Role.CONSORTIUM_ADMIN})
    if not access.member_consortia(user).exists():
        raise PermissionDenied("you are not a member of any consortium yet: ask a consortium admin to invite you")
    form = HospitalForm(request.POST or None, consortia=admin_of)
    if request.method == "POST":
        if not admin_of.exists():
            raise PermissionDenied("only consortium admins create hospitals")
        if form.is_valid():
            d = form.cleaned_data
            h = consortia_services.hospital_create(consortium=d["consortium"], name=d["name"],
                                                   actor=actor_label(user=user), max_epsilon=d["max_epsilon"],
                                                   allowed_models=list(d["allowed_models"]),
                                                   max_rounds=d["max_rounds"])
            messages.success(request, f"Hospital {h.name} created. Create an enrolment token for its node below.")
            return redirect("portal:hospital", hospital_id=h.pk)
    rows = [{"h": h, "state": node_state(h), "limits": limits_summary(h), "link": access.can_open_hospital_page(user, h)}
            for h in access.visible_hospitals(user).select_related("consortium")]
    return render(request, "portal/hospitals.html", {"rows": rows, "form": form, "can_create": admin_of.exists()},
                  status=422 if request.method == "POST" else 200)


def _node_toml_example(request, h: Hospital) -> str:
    models = h.allowed_models or ["logistic_regression", "mlp_classifier", "linear_regression", "mlp_regressor"]
    return (
        "# node.toml — kept next to the hospital's data; the node only makes outbound HTTPS calls\n"
        "[platform]\n"
        f'url = "{request.scheme}://{request.get_host()}"\n'
        'credentials_file = "credentials.json"   # written by `enrol`; keep it private (chmod 600)\n\n'
        "[data]\n"
        'csv = "/data/study/patients.csv"        # never leaves the hospital\n\n'
        "[node]\n"
        'ledger = "ledger.sqlite3"               # local privacy ledger (budget per study)\n'
        'work_dir = "work"\n'
        "poll_wait_s = 20\n\n"
        "[limits]                                # enforced by the node, whatever the platform asks\n"
        f"max_epsilon = {h.max_epsilon if h.max_epsilon is not None else 5.0}\n"
        "max_delta = 1e-5\n"
        f"allowed_models = {json.dumps(models)}\n"
        "auto_approve = false                    # approve each study in the portal\n"
        f"max_rounds = {h.max_rounds or 100}\n")


@login_required
@require_GET
def hospital_detail(request, hospital_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    return _render_hospital(request, h, manage)


def node_limits(h: Hospital) -> dict | None:
    """The limits the node reports in its heartbeats (its node.toml [limits]), if it does."""
    return node_reported_limits(h) or None


def limit_differences(h: Hospital) -> list[str]:
    """Where what is declared in the portal and what the node enforces differ (the node wins)."""
    node = node_limits(h)
    if node is None:
        return []
    out = []
    ne, nr, nm = node.get("max_epsilon"), node.get("max_rounds"), node.get("allowed_models")
    if h.max_epsilon is not None and isinstance(ne, (int, float)) and ne != h.max_epsilon:
        out.append(f"max ε: {h.max_epsilon:g} declared here, {ne:g} on the node")
    if h.max_rounds is not None and isinstance(nr, int) and nr != h.max_rounds:
        out.append(f"max rounds: {h.max_rounds} declared here, {nr} on the node")
    if h.allowed_models and isinstance(nm, list) and set(nm) != set(h.allowed_models):
        out.append(f"models: {', '.join(h.allowed_models)} declared here, {', '.join(map(str, nm))} on the node")
    return out


def hospital_admins(h: Hospital) -> list[str]:
    """The display names of the hospital's admins (its hospital-admin memberships)."""
    ms = Membership.objects.filter(hospital=h, role=Role.HOSPITAL_ADMIN).select_related("user")
    return sorted({display_name(m.user) for m in ms}, key=str.casefold)


def _render_hospital(request, h, manage, token: str = "", status: int = 200, limits_form=None):
    # The studies the viewer may see (access.visible_studies: no drafts for the hospital's own
    # admins), each with this hospital's privacy spend, and the totals across them.
    spend = hospital_privacy_spend(h, access.visible_studies(request.user))
    can_edit = access.can_edit_limits(request.user, h)
    if can_edit and limits_form is None:
        limits_form = HospitalLimitsForm(initial={"max_epsilon": h.max_epsilon, "max_rounds": h.max_rounds,
                                                  "allowed_models": h.allowed_models})
    tokens = list(h.enrolment_tokens.order_by("-created_at")[:20]) if manage else []
    resp = render(request, "portal/hospital.html", {
        "h": h, "manage": manage, "state": node_state(h), "token": token, "spend": spend,
        "admins": hospital_admins(h), "online_window_s": settings.NODE_ONLINE_WINDOW_S,
        "node_toml": _node_toml_example(request, h) if token else "",
        "tokens": tokens, "unused_tokens": [t for t in tokens if t.state == "unused"],
        "limits_form": limits_form if can_edit else None, "node_limits": node_limits(h),
        "limit_differences": limit_differences(h)}, status=status)
    if token:
        resp["Cache-Control"] = "no-store"   # the token is shown once; never cache the page holding it
    return resp


@login_required
@require_http_methods(["GET", "POST"])
def hospital_token(request, hospital_id: int):
    """POST: create a one-time enrolment token, then redirect to GET, which shows it once
    (POST-redirect-GET: reloading shows it no more and mints nothing). A GET without a token
    waiting goes back to the hospital's page."""
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    if not manage:
        raise PermissionDenied("only consortium admins create enrolment tokens")
    if request.method == "POST":
        _, token = consortia_services.enrolment_token_create(hospital=h, user=request.user)
        key = reveal.stash(request, f"enrolment:{h.pk}", token)
        return redirect(reverse("portal:hospital_token", args=[h.pk]) + f"?reveal={key}")
    token = reveal.take(request, f"enrolment:{h.pk}", request.GET.get("reveal", ""))
    if token is None:
        if request.GET.get("reveal"):
            messages.info(request, "That enrolment token was shown once and is not shown again (the platform keeps "
                                   "only its hash). If it was not copied, revoke it below and create a new one.")
        else:
            messages.info(request, "Create an enrolment token with the button below.")
        return redirect("portal:hospital", hospital_id=h.pk)
    return _render_hospital(request, h, manage, token=token)


@login_required
@require_POST
def hospital_token_revoke(request, hospital_id: int, token_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    if not manage:
        raise PermissionDenied("only consortium admins revoke enrolment tokens")
    t = get_object_or_404(EnrolmentToken, pk=token_id, hospital=h)
    if consortia_services.enrolment_token_revoke(token=t, actor=actor_label(user=request.user)):
        messages.success(request, f"Enrolment token created {t.created_at:%Y-%m-%d %H:%M} revoked: it can no longer "
                                  "enrol a node.")
    else:
        messages.info(request, f"That token was already {t.state}: nothing to revoke.")
    return redirect("portal:hospital", hospital_id=h.pk)


@login_required
@require_POST
def hospital_limits(request, hospital_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    if not access.can_edit_limits(request.user, h):
        raise PermissionDenied("only the consortium admin and this hospital's admins declare its limits")
    form = HospitalLimitsForm(request.POST)
    if not form.is_valid():
        return _render_hospital(request, h, manage, status=422, limits_form=form)
    d = form.cleaned_data
    consortia_services.hospital_limits_update(hospital=h, max_epsilon=d["max_epsilon"], max_rounds=d["max_rounds"],
                                              allowed_models=list(d["allowed_models"]),
                                              actor=actor_label(user=request.user))
    messages.success(request, f"Limits of {h.name} saved. New studies are checked against them; the node still "
                              "enforces its own node.toml [limits].")
    return redirect("portal:hospital", hospital_id=h.pk)


@login_required
@require_POST
def hospital_revoke(request, hospital_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    if not manage:
        raise PermissionDenied("only consortium admins revoke nodes")
    notes = consortia_services.node_revoke(hospital=h, actor=actor_label(user=request.user))
    messages.success(request, f"The node of {h.name} is revoked: its token no longer works. Enrol it again with a new "
                              "token (see docs/node.md, 'Re-enrolling a node').")
    for note in notes:
        messages.info(request, note)
    return redirect("portal:hospital", hospital_id=h.pk)
