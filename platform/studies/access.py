"""Who may see and do what: THE access policy of the portal, the researcher REST API and the audit
report views. Every check of a user's right to see or change something goes through this module.

Rules:
- Nobody sees anything of a consortium they are not a member of: such objects answer 404
  (their existence is not revealed).
- Inside their consortium, a user without the right role for an action gets 403.
- A hospital admin sees only the studies their hospital is invited to, once recruitment opened
  (drafts are not sent to anyone), and inside a study only their own hospital's participation,
  metrics and privacy spend. They see their own hospital(s) only.
- Researchers and consortium admins define and manage studies; auditors and consortium admins read
  the audit trail and export chains; researchers also read the study audit report.
- The final model is for the study's researchers, admins, auditors and the hospitals that approved
  the study (a hospital that declined does not get it).
- The model card is what the study publishes with its released model: every viewer who sees the
  study reads the same card, every approved site's final-round scores and privacy spend included
  (``model_card_study``); before the release it has no per-hospital rows for anyone.
- Auditors read; they never change state. Superusers hold every role everywhere.
- A hospital's page (node state, admins, privacy spend across studies) is for the consortium
  admins, the consortium's auditors and that hospital's own admins; it lists the studies the
  viewer may see (``visible_studies``).
- Consortium admins manage people (invite, change and remove roles) and hospitals; a hospital's
  limits are declared by the consortium admin or that hospital's own admins.
- Every member may hold personal API tokens: a token acts with its user's roles at each request.
- Menus show exactly what these rules let the user open (``menu_for``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from consortia.models import Consortium, Hospital, Membership
from consortia.selectors import roles_in

from . import selectors
from .models import Participation, Study

Role = Membership.Role
MANAGE_STUDY_ROLES = frozenset({Role.CONSORTIUM_ADMIN, Role.RESEARCHER})
AUDIT_ROLES = frozenset({Role.CONSORTIUM_ADMIN, Role.AUDITOR})
REPORT_ROLES = AUDIT_ROLES | {Role.RESEARCHER}
MODEL_ROLES = MANAGE_STUDY_ROLES | {Role.AUDITOR}


# ---------------------------------------------------------------- consortia and roles


def roles_anywhere(user) -> set[str]:
    """Every role the user holds in any consortium."""
    if user.is_superuser:
        return set(Role.values)
    return set(Membership.objects.filter(user=user).values_list("role", flat=True))


def consortia_with_role(user, roles) -> QuerySet[Consortium]:
    """Consortia where the user holds one of ``roles``."""
    if user.is_superuser:
        return Consortium.objects.all()
    return Consortium.objects.filter(memberships__user=user, memberships__role__in=list(roles)).distinct()


def member_consortia(user) -> QuerySet[Consortium]:
    return consortia_with_role(user, Role.values)


def auditable_consortia(user) -> QuerySet[Consortium]:
    """Consortia whose audit trail the user reads (auditor or consortium admin)."""
    return consortia_with_role(user, AUDIT_ROLES)


def consortium_for_new_study(user, consortium_id: int) -> Consortium:
    """The consortium a new study is defined in: 404 unless the user is a member, 403 unless they
    may manage studies there."""
    roles = roles_in(user, consortium_id)
    consortium = Consortium.objects.filter(pk=consortium_id).first()
    if consortium is None or not roles:
        raise Http404("no such consortium")
    if not roles & MANAGE_STUDY_ROLES:
        raise PermissionDenied("only researchers and consortium admins define studies")
    return consortium


def admin_hospital_ids(user) -> set[int]:
    """Hospitals the user administers as a hospital admin."""
    return set(Membership.objects.filter(user=user, role=Role.HOSPITAL_ADMIN).values_list("hospital_id", flat=True))


def first_run_open() -> bool:
    """A fresh install: no consortium has an admin yet, so the first-run page may create one."""
    return not Membership.objects.filter(role=Role.CONSORTIUM_ADMIN).exists()


def people_consortia(user) -> QuerySet[Consortium]:
    """Consortia whose members the user manages (consortium admins)."""
    return consortia_with_role(user, {Role.CONSORTIUM_ADMIN})


def membership_for_admin(user, membership_id: int) -> Membership:
    """A membership the user may change or remove: 404 outside their consortia, 403 for a member
    who is not that consortium's admin."""
    m = Membership.objects.select_related("user", "consortium", "hospital").filter(pk=membership_id).first()
    if m is None or not roles_in(user, m.consortium_id):
        raise Http404("no such member")
    if Role.CONSORTIUM_ADMIN not in roles_in(user, m.consortium_id):
        raise PermissionDenied("only consortium admins change roles")
    return m


def consortium_for_people(user, consortium_id: int) -> Consortium:
    """A consortium whose people the user manages: 404 for non-members, 403 for other roles."""
    c = Consortium.objects.filter(pk=consortium_id).first()
    roles = roles_in(user, consortium_id) if c is not None else set()
    if not roles:
        raise Http404("no such consortium")
    if Role.CONSORTIUM_ADMIN not in roles:
        raise PermissionDenied("only consortium admins invite people and change roles")
    return c


@dataclass(frozen=True)
class Menu:
    """The links the header shows a user: each one opens without a 403 for them."""

    new_study: bool
    hospitals: bool
    inbox: bool
    audit: bool
    people: bool
    api_tokens: bool


def menu_for(user) -> Menu:
    if not getattr(user, "is_authenticated", False):
        return Menu(False, False, False, False, False, False)
    roles = roles_anywhere(user)
    return Menu(new_study=bool(roles & MANAGE_STUDY_ROLES), hospitals=bool(roles), inbox=Role.HOSPITAL_ADMIN in roles,
                audit=bool(roles & AUDIT_ROLES), people=Role.CONSORTIUM_ADMIN in roles, api_tokens=bool(roles))


# ---------------------------------------------------------------- studies


def visible_studies(user) -> QuerySet[Study]:
    """Studies the user may see: every study of the consortia where they hold a non-hospital role;
    as a hospital admin, the non-draft studies their hospital is invited to."""
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
    """What one user may see and do in one study they can see."""

    study: Study
    roles: set[str]
    hospital_ids: set[int] | None = field(default=None)  # None: every hospital of the study

    @property
    def can_manage(self) -> bool:
        """Start, pause, resume, cancel."""
        return bool(self.roles & MANAGE_STUDY_ROLES)

    @property
    def can_resolve_release(self) -> bool:
        """Resolve a blocked final-model release (re-run the final evaluation, or override)."""
        return Role.CONSORTIUM_ADMIN in self.roles

    @property
    def can_report(self) -> bool:
        """Read the study audit report (HTML and PDF)."""
        return bool(self.roles & REPORT_ROLES)

    @property
    def can_audit(self) -> bool:
        """Read the study's audit trail and export its chain."""
        return bool(self.roles & AUDIT_ROLES)

    @property
    def sees_all_hospitals(self) -> bool:
        return self.hospital_ids is None

    def participations(self) -> QuerySet[Participation]:
        qs = self.study.participations.select_related("hospital").order_by("hospital__name")
        if self.hospital_ids is not None:
            qs = qs.filter(hospital_id__in=self.hospital_ids)
        return qs

    def filter_hospital(self, qs: QuerySet, field_name: str = "hospital_id") -> QuerySet:
        """Only the rows of hospitals this user sees (``field_name`` names the hospital id)."""
        return qs if self.hospital_ids is None else qs.filter(**{f"{field_name}__in": self.hospital_ids})

    def release_block(self) -> dict | None:
        """Why the final-model release is blocked and by whom (selectors.release_block); a
        hospital admin sees its own hospitals by name and the others only counted."""
        block = selectors.release_block(self.study)
        if block is None or self.sees_all_hospitals:
            return block
        mine = set(self.participations().values_list("hospital__name", flat=True))
        return {**block, "attestations": [{"model_sha256": a["model_sha256"],
                                           "hospitals": [h for h in a["hospitals"] if h in mine],
                                           "n_hospitals": len(a["hospitals"])} for a in block["attestations"]]}

    def recruitment(self) -> dict | None:
        """While recruiting: the deadline and whom the study waits for (selectors.recruitment_status);
        a hospital admin sees its own hospitals by name and the others only counted."""
        status = selectors.recruitment_status(self.study)
        if status is None or self.sees_all_hospitals:
            return status
        mine = [w for w in status["waiting_for"] if w["hospital_id"] in self.hospital_ids]
        return {**status, "waiting_for": mine, "others_waiting": len(status["waiting_for"]) - len(mine)}

    @property
    def can_download_model(self) -> bool:
        if self.roles & MODEL_ROLES:
            return True
        return self.participations().filter(state=Participation.State.APPROVED).exists()


def scope_for(user, study: Study) -> StudyScope:
    """The scope of a study already known to be visible to the user (see visible_studies)."""
    roles = roles_in(user, study.consortium_id)
    if roles - {Role.HOSPITAL_ADMIN}:
        return StudyScope(study, roles, None)
    return StudyScope(study, roles, admin_hospital_ids(user) & set(
        study.participations.values_list("hospital_id", flat=True)))


def study_scope(user, study_id: int) -> StudyScope:
    """The study if the user may see it (else 404), with what they may see and do in it."""
    study = get_object_or_404(visible_studies(user).select_related("consortium", "owner", "custodian"), pk=study_id)
    return scope_for(user, study)


def model_card_study(user, study_id: int) -> Study:
    """The study whose model card the user reads: anyone who sees the study (else 404). The card
    (studies.model_card) does not depend on the viewer: a hospital admin reads the same rows for
    every site as a consortium admin, unlike the study page's per-hospital views."""
    return study_scope(user, study_id).study


# ---------------------------------------------------------------- hospitals and invitations


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
    """A hospital's page and whether the user manages it (tokens, revocation): consortium admins
    manage; the hospital's own admins and the consortium's auditors read (the page shows the
    hospital's privacy spend across the studies they see: the data-protection officer's view).
    Other consortium: 404. A hospital admin looking at another hospital: 404 (they do not see
    other hospitals at all). Same consortium, other role (researchers): 403."""
    h = Hospital.objects.select_related("consortium").filter(pk=hospital_id).first()
    if h is None:
        raise Http404
    roles = roles_in(user, h.consortium_id)
    if not roles:
        raise Http404
    manage = Role.CONSORTIUM_ADMIN in roles
    if manage or Role.AUDITOR in roles or h.pk in admin_hospital_ids(user) or user.is_superuser:
        return h, manage
    if roles == {Role.HOSPITAL_ADMIN}:
        raise Http404
    raise PermissionDenied("only the consortium admin and this hospital's admins can open this page")


def can_open_hospital_page(user, hospital: Hospital) -> bool:
    """Whether ``hospital_for_admin_page`` lets the user in (lists link only to pages that open)."""
    try:
        hospital_for_admin_page(user, hospital.pk)
    except (Http404, PermissionDenied):
        return False
    return True


def can_edit_limits(user, hospital: Hospital) -> bool:
    """The consortium admin and the hospital's own admins declare its limits in the portal."""
    return (Role.CONSORTIUM_ADMIN in roles_in(user, hospital.consortium_id) or user.is_superuser
            or hospital.pk in admin_hospital_ids(user))


def inbox_hospital_ids(user) -> set[int]:
    """The hospitals whose invitations the user decides; 403 for anyone who administers none."""
    ids = admin_hospital_ids(user)
    if not ids:
        raise PermissionDenied("the inbox is for hospital admins")
    return ids


def invitation_for(user, participation_id: int) -> Participation:
    """An invitation of one of the user's hospitals (403 for non hospital admins, 404 for other
    hospitals' invitations and for drafts)."""
    ids = inbox_hospital_ids(user)
    return get_object_or_404(Participation.objects.select_related("study", "hospital", "study__consortium")
                             .exclude(study__status=Study.Status.DRAFT), pk=participation_id, hospital_id__in=ids)


# ---------------------------------------------------------------- audit trails

@dataclass
class TrailScope:
    """Which audit events a user may read on one trail page."""

    consortium_ids: set[int] | None  # None: every consortium (superuser)
    study: Study | None = None       # one study's chain
    consortium_id: int | None = None  # one consortium's events


def trail_scope(user, *, study_id: int | None = None, consortium_id: int | None = None) -> TrailScope:
    """The trail of one study, of one consortium, or of every consortium the user audits.
    A study or consortium the user cannot see: 404; one they see without an audit role: 403;
    the whole trail for a user who audits no consortium: 403."""
    allowed = None if user.is_superuser else set(auditable_consortia(user).values_list("pk", flat=True))
    if study_id is not None:
        scope = study_scope(user, study_id)
        if not scope.can_audit:
            raise PermissionDenied("only auditors and consortium admins read the audit trail")
        return TrailScope(allowed, study=scope.study)
    if consortium_id is not None:
        if not roles_in(user, consortium_id) or not Consortium.objects.filter(pk=consortium_id).exists():
            raise Http404("no such consortium")
        if allowed is not None and consortium_id not in allowed:
            raise PermissionDenied("only auditors and consortium admins read the audit trail")
        return TrailScope(allowed, consortium_id=consortium_id)
    if allowed is not None and not allowed:
        raise PermissionDenied("you audit no consortium")
    return TrailScope(allowed)


def trail_hospital(user, scope: TrailScope, hospital_id: int) -> Hospital:
    """A hospital to filter a trail page by: one of the consortia the page covers, else 404."""
    qs = Hospital.objects.filter(pk=hospital_id)
    if scope.study is not None:
        qs = qs.filter(consortium_id=scope.study.consortium_id)
    elif scope.consortium_id is not None:
        qs = qs.filter(consortium_id=scope.consortium_id)
    elif scope.consortium_ids is not None:
        qs = qs.filter(consortium_id__in=scope.consortium_ids)
    h = qs.first()
    if h is None:
        raise Http404("no such hospital")
    return h


def check_audit_event(user, event) -> None:
    """May the user open this audit event's detail page? Events of a consortium the user audits.
    An unknown event (None), another consortium's event, and a platform event (no consortium) for
    anyone but a superuser: 404; an event of the user's own consortium without an audit role: 403."""
    if user.is_superuser and event is not None:
        return
    if event is None or event.consortium_id is None or not roles_in(user, event.consortium_id):
        raise Http404("no such event")
    if not roles_in(user, event.consortium_id) & AUDIT_ROLES:
        raise PermissionDenied("only auditors and consortium admins read the audit trail")
