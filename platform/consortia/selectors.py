"""Who may see what: roles of a user in a consortium (used by the API, the portal and audit views)."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import Consortium, Hospital, Membership

Role = Membership.Role
MANAGE_STUDY_ROLES = {Role.CONSORTIUM_ADMIN, Role.RESEARCHER}
AUDIT_ROLES = {Role.CONSORTIUM_ADMIN, Role.AUDITOR}


def roles_in(user, consortium_id: int) -> set[str]:
    """The user's roles in one consortium (superusers hold all of them)."""
    if not getattr(user, "is_authenticated", False):
        return set()
    if user.is_superuser:
        return set(Role.values)
    return set(Membership.objects.filter(user=user, consortium_id=consortium_id).values_list("role", flat=True))


def consortia_of(user) -> QuerySet[Consortium]:
    if user.is_superuser:
        return Consortium.objects.all()
    return Consortium.objects.filter(memberships__user=user).distinct()


def admin_hospitals_of(user, consortium_id: int | None = None) -> QuerySet[Hospital]:
    """Hospitals the user administers as a hospital admin."""
    qs = Hospital.objects.filter(admins__user=user, admins__role=Role.HOSPITAL_ADMIN)
    if consortium_id is not None:
        qs = qs.filter(consortium_id=consortium_id)
    return qs.distinct()


def can_manage_studies(user, consortium_id: int) -> bool:
    return bool(roles_in(user, consortium_id) & MANAGE_STUDY_ROLES)


def can_audit(user, consortium_id: int) -> bool:
    return bool(roles_in(user, consortium_id) & AUDIT_ROLES)
