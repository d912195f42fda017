"""Who may see and do what in the portal. Every view goes through these helpers.

Rules:
- Nobody sees anything of a consortium they are not a member of: such objects answer 404
  (the object's existence is not revealed).
- Inside their consortium, a user without the right role for an action gets 403.
- A hospital admin sees only the studies their hospital is invited to (once recruitment opened),
  and inside a study only their own hospital's participation, metrics and privacy spend.
- Auditors read; they never change state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from consortia.models import Consortium, Hospital, Membership
from consortia.selectors import MANAGE_STUDY_ROLES, roles_in
from studies.models import Participation, Study

Role = Membership.Role


def consortia_with_role(user, roles: set[str]) -> QuerySet[Consortium]:
    if user.is_superuser:
        return Consortium.objects.all()
    return Consortium.objects.filter(memberships__user=user, memberships__role__in=list(roles)).distinct()


def member_consortia(user) -> QuerySet[Consortium]:
    return consortia_with_role(user, set(Role.values))


def admin_hospital_ids(user) -> set[int]:
    return set(Membership.objects.filter(user=user, role=Role.HOSPITAL_ADMIN).values_list("hospital_id", flat=True))


def visible_studies(user) -> QuerySet[Study]:
    if user.is_superuser:
        return Study.objects.all()
    q = Q(pk__in=[])
    for m in Membership.objects.filter(user=user):
        if m.role == Role.HOSPITAL_ADMIN:
            # Drafts are not yet sent to anyone: a hospital sees a study once it is recruiting.
            q |= Q(consortium_id=m.consortium_id, participations__hospital_id=m.hospital_id) & ~Q(status=Study.Status.DRAFT)
        else:
            q |= Q(consortium_id=m.consortium_id)
    return Study.objects.filter(q).distinct()


@dataclass
class StudyScope:
    """What one user may see and do in one study."""

    study: Study
    roles: set[str]
    hospital_ids: set[int] | None = field(default=None)  # None: every hospital of the study

    @property
    def can_manage(self) -> bool:
        return bool(self.roles & MANAGE_STUDY_ROLES)

    @property
    def sees_all_hospitals(self) -> bool:
        return self.hospital_ids is None

    def participations(self) -> QuerySet[Participation]:
        qs = self.study.participations.select_related("hospital").order_by("hospital__name")
        if self.hospital_ids is not None:
            qs = qs.filter(hospital_id__in=self.hospital_ids)
        return qs

    def filter_hospital(self, qs: QuerySet, field_name: str = "hospital_id") -> QuerySet:
        return qs if self.hospital_ids is None else qs.filter(**{f"{field_name}__in": self.hospital_ids})

    @property
    def can_download_model(self) -> bool:
        if self.can_manage or Role.AUDITOR in self.roles:
            return True
        return self.participations().filter(state=Participation.State.APPROVED).exists()


def study_scope(user, study_id: int) -> StudyScope:
    """The study if the user may see it (else 404), with what they may see in it."""
    study = get_object_or_404(visible_studies(user).select_related("consortium", "owner", "custodian"), pk=study_id)
    roles = roles_in(user, study.consortium_id)
    if roles - {Role.HOSPITAL_ADMIN}:
        return StudyScope(study, roles, None)
    return StudyScope(study, roles, admin_hospital_ids(user) & set(
        study.participations.values_list("hospital_id", flat=True)))


def visible_hospitals(user) -> QuerySet[Hospital]:
    """Hospitals whose node status the user may see: all of a consortium for its non-hospital roles,
    only their own hospital(s) for hospital admins."""
    if user.is_superuser:
        return Hospital.objects.all()
    q = Q(pk__in=[])
    for m in Membership.objects.filter(user=user):
        if m.role == Role.HOSPITAL_ADMIN:
            q |= Q(pk=m.hospital_id)
        else:
            q |= Q(consortium_id=m.consortium_id)
    return Hospital.objects.filter(q).distinct()


def hospital_for_admin_page(user, hospital_id: int) -> tuple[Hospital, bool]:
    """A hospital's page: consortium admins (manage) and the hospital's own admins (read).
    Other consortium: 404. Same consortium, other role: 403."""
    h = Hospital.objects.select_related("consortium").filter(pk=hospital_id).first()
    if h is None:
        raise Http404
    roles = roles_in(user, h.consortium_id)
    if not roles:
        raise Http404
    manage = Role.CONSORTIUM_ADMIN in roles
    if manage or h.pk in admin_hospital_ids(user) or user.is_superuser:
        return h, manage
    if roles == {Role.HOSPITAL_ADMIN}:
        raise Http404  # a hospital admin does not see other hospitals at all
    from django.core.exceptions import PermissionDenied

    raise PermissionDenied("only the consortium admin and this hospital's admins can open this page")
