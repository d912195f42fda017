"""People of a consortium (consortium admins): invite by e-mail, change and remove roles, send an
invitation again. Everything goes through consortia.people (each change is an audit event)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from consortia import people
from consortia.models import Hospital, Membership, PasswordLink
from studies import access

from ..mail import send_invitation
from ..people_forms import InviteForm, MemberRoleForm

Role = Membership.Role


def _consortium(request):
    admin_of = list(access.people_consortia(request.user).order_by("name"))
    if not admin_of:
        raise PermissionDenied("only consortium admins manage people")
    wanted = request.GET.get("consortium") or request.POST.get("consortium")
    if wanted and str(wanted).isdigit():
        return access.consortium_for_people(request.user, int(wanted)), admin_of
    return admin_of[0], admin_of


def _members(consortium):
    ms = (Membership.objects.filter(consortium=consortium).select_related("user", "hospital")
          .order_by("user__first_name", "user__last_name", "user__username", "role"))
    by_user: dict[int, dict] = {}
    for m in ms:
        row = by_user.setdefault(m.user_id, {"user": m.user, "name": people.display_name(m.user), "memberships": [],
                                             "pending": not m.user.has_usable_password()})
        row["memberships"].append({"m": m, "form": MemberRoleForm(consortium=consortium, initial={
            "role": m.role, "hospital": m.hospital_id}, prefix=f"m{m.pk}")})
    pending_links = set(PasswordLink.objects.filter(user_id__in=by_user, purpose=PasswordLink.Purpose.INVITATION,
                                                    used_at__isnull=True).values_list("user_id", flat=True))
    for uid, row in by_user.items():
        row["invited"] = row["pending"] and uid in pending_links
    return list(by_user.values())


@login_required
@require_http_methods(["GET", "POST"])
def people_page(request):
    consortium, admin_of = _consortium(request)
    form = InviteForm(request.POST or None, consortium=consortium)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            d = form.cleaned_data
            try:
                user, token = people.person_invite(consortium=consortium, email=d["email"], full_name=d["full_name"],
                                                   role=d["role"], hospital=d["hospital"], by=request.user)
            except people.PeopleError as exc:
                form.add_error(None, str(exc))
            else:
                problem = send_invitation(request, user=user, token=token, consortium=consortium,
                                          role_label=Role(d["role"]).label, by=request.user)
                name = people.display_name(user)
                if problem:
                    messages.error(request, f"{name} now has the role, but {problem} (button 'Send invitation again').")
                elif token:
                    messages.success(request, f"Invitation sent to {user.email}: {name} sets a password with the link "
                                              "in it (valid 7 days, works once).")
                else:
                    messages.success(request, f"{name} already had an account: the new role is theirs now, and they "
                                              "were told by e-mail.")
                return redirect(reverse("portal:people") + f"?consortium={consortium.pk}")
        status = 422
    hospitals = Hospital.objects.filter(consortium=consortium).order_by("name")
    return render(request, "portal/people.html", {
        "consortium": consortium, "admin_of": admin_of, "form": form, "members": _members(consortium),
        "has_hospitals": hospitals.exists()}, status=status)


def _back(m):
    return redirect(reverse("portal:people") + f"?consortium={m.consortium_id}")


@login_required
@require_POST
def member_change(request, membership_id: int):
    m = access.membership_for_admin(request.user, membership_id)
    form = MemberRoleForm(request.POST, consortium=m.consortium, prefix=f"m{m.pk}")
    if not form.is_valid():
        messages.error(request, "Role not changed: " + "; ".join(e for errs in form.errors.values() for e in errs))
        return _back(m)
    before = m.get_role_display()
    try:
        people.member_change(membership=m, role=form.cleaned_data["role"], hospital=form.cleaned_data["hospital"],
                             by=request.user)
    except people.PeopleError as exc:
        messages.error(request, f"Role not changed: {exc}.")
    else:
        where = f" ({m.hospital.name})" if m.hospital else ""
        messages.success(request, f"{people.display_name(m.user)}: {before} → {m.get_role_display()}{where}.")
    return _back(m)


@login_required
@require_POST
def member_remove(request, membership_id: int):
    m = access.membership_for_admin(request.user, membership_id)
    try:
        people.member_remove(membership=m, by=request.user)
    except people.PeopleError as exc:
        messages.error(request, f"Not removed: {exc}.")
    else:
        messages.success(request, f"{people.display_name(m.user)} no longer has the role {m.get_role_display()}.")
    return _back(m)


@login_required
@require_POST
def member_resend(request, membership_id: int):
    m = access.membership_for_admin(request.user, membership_id)
    try:
        token = people.invitation_resend(user=m.user, consortium=m.consortium, by=request.user)
    except people.PeopleError as exc:
        messages.error(request, f"Not sent: {exc}.")
        return _back(m)
    problem = send_invitation(request, user=m.user, token=token, consortium=m.consortium,
                              role_label=m.get_role_display(), by=request.user)
    if problem:
        messages.error(request, f"Not sent: {problem}.")
    else:
        messages.success(request, f"A new invitation went to {m.user.email}; the earlier link no longer works.")
    return _back(m)


