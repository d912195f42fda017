"""The hospital admin's inbox: invitations to studies, with local checks, approve or decline."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from audit.services import actor_label
from fedproto.codec import get_codec
from fedproto.datasets import dataset_for
from studies import access, selectors, services
from studies.models import Participation, Study


@login_required
@require_GET
def inbox(request):
    ids = access.inbox_hospital_ids(request.user)
    base = Participation.objects.filter(hospital_id__in=ids).exclude(study__status=Study.Status.DRAFT) \
        .select_related("study", "hospital").order_by("-study__created_at")
    pending = [p for p in base if p.state == Participation.State.INVITED and p.study.status == Study.Status.RECRUITING]
    decided = [p for p in base if p not in pending]
    return render(request, "portal/inbox.html", {"pending": pending, "decided": decided[:50]})


def _local_checks(p: Participation) -> list[dict]:
    s, h = p.study, p.hospital
    checks = []
    if h.max_epsilon is None:
        checks.append({"ok": None, "text": "No maximum ε declared for this hospital in the portal; the node's own "
                                            "[limits] max_epsilon still applies."})
    else:
        checks.append({"ok": s.epsilon <= h.max_epsilon,
                       "text": f"Study budget ε={s.epsilon:g} vs this hospital's cap ε={h.max_epsilon:g}: "
                               + ("within the cap." if s.epsilon <= h.max_epsilon else
                                  "ABOVE the cap — the node will refuse any job that would spend beyond it.")})
    mt = s.model_spec.get("type")
    if not h.allowed_models:
        checks.append({"ok": None, "text": f"Model {mt}: no allowed-model list declared in the portal; the node's "
                                            "[limits] allowed_models still applies."})
    else:
        ok = mt in h.allowed_models
        checks.append({"ok": ok, "text": f"Model {mt}: " + ("allowed" if ok else "NOT allowed")
                       + f" (allowed here: {', '.join(h.allowed_models)})."})
    return checks


@login_required
@require_http_methods(["GET", "POST"])
def invitation(request, participation_id: int):
    p = access.invitation_for(request.user, participation_id)
    if request.method == "POST":
        _decide(request, p)
        return redirect("portal:invitation", participation_id=p.pk)
    s = p.study
    return render(request, "portal/invitation.html", {
        "p": p, "s": s, "checks": _local_checks(p), "config_json": json.dumps(selectors.study_config(s), indent=2),
        "enc": get_codec(s.encryption["codec"]).describe(s.encryption),
        "can_decide": p.state == Participation.State.INVITED and s.status == Study.Status.RECRUITING,
        "can_withdraw": p.state == Participation.State.APPROVED and s.status in (Study.Status.RECRUITING, Study.Status.RUNNING,
                                                                       Study.Status.PAUSED),
        "n_features": len(s.schema.get("features", [])), "dataset": dataset_for(s.datasets, p.hospital_id)})


def _decide(request, p: Participation) -> None:
    """Approve, decline (a reason is required) or withdraw an approval (reason required): each one
    a service call that writes its audit event; a refusal is shown, nothing is half-done."""
    decision = request.POST.get("decision", "")
    reason = request.POST.get("reason", "").strip()[:2000]
    actor = actor_label(user=request.user)
    if decision in ("decline", "withdraw") and not reason:
        messages.error(request, f"Say why you {decision} (the reason is recorded in the audit trail and shown to "
                                "the study's researchers); nothing was changed.")
        return
    try:
        if decision == "withdraw":
            notes = services.participation_withdraw(participation=p, actor=actor, reason=reason)
        else:
            services.participation_decide(participation=p, decision=decision, actor=actor, reason=reason)
            notes = [f"{p.hospital.name} {'approved' if decision == 'approve' else 'declined'} study {p.study.name}."]
    except services.ServiceError as exc:
        messages.error(request, str(exc))
        return
    for n in notes:
        messages.success(request, n)
