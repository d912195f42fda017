"""Hospital pages: the list (and creating a hospital), one hospital's page with its node status,
enrolment tokens and revocation."""

from __future__ import annotations

import json
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.services import actor_label
from consortia import services as consortia_services
from consortia.models import Hospital
from studies import access
from studies.models import Participation, Study

from ..forms import HospitalForm

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
        raise PermissionDenied("you are not a member of any consortium")
    form = HospitalForm(request.POST or None, consortia=admin_of)
    if request.method == "POST":
        if not admin_of.exists():
            raise PermissionDenied("only consortium admins create hospitals")
        if form.is_valid():
            d = form.cleaned_data
            h = consortia_services.hospital_create(consortium=d["consortium"], name=d["name"],
                                                   actor=actor_label(user=user), max_epsilon=d["max_epsilon"],
                                                   allowed_models=list(d["allowed_models"]))
            messages.success(request, f"Hospital {h.name} created. Create an enrolment token for its node below.")
            return redirect("portal:hospital", hospital_id=h.pk)
    rows = [{"h": h, "state": node_state(h)} for h in access.visible_hospitals(user).select_related("consortium")]
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
        "max_rounds = 100\n")


@login_required
@require_GET
def hospital_detail(request, hospital_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    return _render_hospital(request, h, manage)


def _render_hospital(request, h, manage, token: str = "", status: int = 200):
    parts = Participation.objects.filter(hospital=h).select_related("study").order_by("-study__created_at")
    if not manage:
        parts = parts.exclude(study__status=Study.Status.DRAFT)   # drafts are not sent to hospitals yet
    parts = parts[:50]
    return render(request, "portal/hospital.html", {
        "h": h, "manage": manage, "state": node_state(h), "token": token, "parts": parts,
        "node_toml": _node_toml_example(request, h) if token else "",
        "tokens": h.enrolment_tokens.order_by("-created_at")[:10] if manage else []}, status=status)


@login_required
@require_POST
def hospital_token(request, hospital_id: int):
    h, manage = access.hospital_for_admin_page(request.user, hospital_id)
    if not manage:
        raise PermissionDenied("only consortium admins create enrolment tokens")
    _, token = consortia_services.enrolment_token_create(hospital=h, user=request.user)
    resp = _render_hospital(request, h, manage, token=token)
    resp["Cache-Control"] = "no-store"   # the token is shown once; never cache the page holding it
    return resp


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
