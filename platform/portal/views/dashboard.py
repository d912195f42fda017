"""The dashboard: the studies and hospitals the user sees, and the invitations waiting for them."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from consortia.models import Membership
from studies import access, selectors
from studies.models import Participation, Study

from .hospitals import node_state


def getting_started(user, hospitals: list) -> dict | None:
    """For a consortium admin of a consortium still being set up: what is left to do."""
    admin_of = access.people_consortia(user)
    if not admin_of.exists():
        return None
    members = Membership.objects.filter(consortium__in=admin_of).values("user_id").distinct().count()
    steps = {"hospitals": bool(hospitals), "nodes": any(row["h"].token_hash for row in hospitals),
             "people": members > 1, "studies": Study.objects.filter(consortium__in=admin_of).exists()}
    return None if all(steps.values()) else steps


@login_required
@require_GET
def dashboard(request):
    user = request.user
    studies = list(access.visible_studies(user).select_related("consortium").order_by("-created_at")[:100])
    own_h = access.admin_hospital_ids(user)
    rows = []
    for s in studies:
        parts = list(access.scope_for(user, s).participations())
        rows.append({"study": s, "progress": selectors.study_progress(s),
                     "approved": sum(p.state == Participation.State.APPROVED for p in parts),
                     "invited": len(parts), "parts": parts})
    hospitals = [{"h": h, "state": node_state(h)} for h in access.visible_hospitals(user).select_related("consortium")]
    inbox = 0
    if own_h:
        inbox = Participation.objects.filter(hospital_id__in=own_h, state=Participation.State.INVITED,
                                             study__status=Study.Status.RECRUITING).count()
    return render(request, "portal/dashboard.html", {
        "getting_started": getting_started(user, hospitals),
        "rows": rows, "hospitals": hospitals, "can_create": bool(access.roles_anywhere(user) & access.MANAGE_STUDY_ROLES),
        "inbox_count": inbox, "online_window": settings.NODE_ONLINE_WINDOW_S})
