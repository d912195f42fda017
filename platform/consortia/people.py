"""People: invitations, one-time password links (set a password, reset it), role changes and
removals made in the portal, and how a person is named wherever they are shown.

Each state change writes its audit event in the same transaction (grants, changes and removals
go through the membership services of services.py, so they are recorded one way only). Links are
256-bit random tokens of which only the SHA-256 is stored; each expires and works once.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.db import transaction
from django.utils import timezone

from audit.services import actor_label, audit_record

from .models import Consortium, Hospital, Membership, PasswordLink
from .services import membership_grant, membership_revoke, membership_save
from .tokens import new_token, token_hash

Role = Membership.Role
INVITATION_TTL = timedelta(days=7)
RESET_TTL = timedelta(hours=2)
# At most one reset e-mail per account in this many seconds (the page answers the same either way).
RESET_MIN_INTERVAL_S = 60


class PeopleError(Exception):
    """A people change that cannot be made; the message says why and what to do instead."""


# ---------------------------------------------------------------- names


def display_name(user) -> str:
    """How a person is shown: their full name, else their username (never an internal label)."""
    if user is None:
        return "—"
    return (user.get_full_name() or "").strip() or user.get_username()


def actor_names(labels) -> dict[str, str]:
    """Display names for audit actor labels (``user:<id>:<username>``, ``node:<id>:<hospital>``,
    ``system`` ...), looked up in one query. Unknown users keep the name recorded in the label."""
    user_ids = {}
    for label in set(labels):
        parts = str(label).split(":", 2)
        if len(parts) == 3 and parts[0] == "user" and parts[1].isdigit():
            user_ids[label] = int(parts[1])
    users = {u.pk: u for u in get_user_model().objects.filter(pk__in=set(user_ids.values()))}
    out = {}
    for label in set(labels):
        label = str(label)
        parts = label.split(":", 2)
        if label in user_ids:
            u = users.get(user_ids[label])
            out[label] = display_name(u) if u is not None else parts[2]
        elif len(parts) == 3 and parts[0] == "node":
            out[label] = f"{parts[2]} (node)"
        elif parts[0] == "anonymous":
            out[label] = f"anonymous ({parts[1]})" if len(parts) > 1 and parts[1] else "anonymous"
        else:
            out[label] = label
    return out


def actor_display(label: str) -> str:
    return actor_names([label])[str(label)]


# ---------------------------------------------------------------- one-time links


def _link_create(*, user, purpose: str, ttl: timedelta, consortium: Consortium | None = None,
                 created_by=None) -> str:
    """A new link for ``user``; earlier unused links of the same purpose stop working."""
    now = timezone.now()
    token = new_token("pwl")
    PasswordLink.objects.filter(user=user, purpose=purpose, used_at__isnull=True, expires_at__gt=now).update(expires_at=now)
    PasswordLink.objects.create(user=user, purpose=purpose, token_hash=token_hash(token), consortium=consortium,
                                created_by=created_by, expires_at=now + ttl)
    return token


def link_digest(token: str) -> str:
    """What a link is known by once its clear token has been read from the URL (the session keeps
    this digest, never the token)."""
    return token_hash(token[:200]) if token else ""


def password_link_valid(digest: str) -> PasswordLink | None:
    """The link if it can still be used (not used, not expired), else None."""
    if not digest:
        return None
    return (PasswordLink.objects.select_related("user", "consortium")
            .filter(token_hash=digest, used_at__isnull=True, expires_at__gt=timezone.now()).first())


def password_set_with_link(*, digest: str, password: str):
    """Set the password of the link's user and use the link up. Raises PeopleError for a link that
    no longer works, django's ValidationError for a password the validators refuse."""
    with transaction.atomic():
        link = (PasswordLink.objects.select_for_update().select_related("user")
                .filter(token_hash=digest).first()) if digest else None
        now = timezone.now()
        if link is None or link.used_at is not None or link.expires_at <= now:
            raise PeopleError("this link no longer works (it was used, replaced by a newer one, or it expired): "
                              "ask for a new one on the 'Forgot your password?' page, or ask your consortium admin "
                              "to send the invitation again")
        user = link.user
        validate_password(password, user=user)
        user.set_password(password)
        user.is_active = True
        user.save(update_fields=["password", "is_active"])
        link.used_at = now
        link.save(update_fields=["used_at"])
        audit_record(action="auth.password_set", actor=actor_label(user=user), obj=user,
                     consortium_id=link.consortium_id,
                     data={"user": user.get_username(), "through": link.purpose, "link_id": link.pk})
    return user


def password_reset_request(*, email: str) -> tuple[object, str] | None:
    """(user, clear token) for an active account with this e-mail address, or None (no such account,
    or a link was sent moments ago). The caller answers the same in every case."""
    email = (email or "").strip()
    if not email or len(email) > 254:
        return None
    users = list(get_user_model().objects.filter(email__iexact=email, is_active=True)[:2])
    if len(users) != 1:  # none, or an address shared by two accounts: nothing is sent
        return None
    user = users[0]
    recent = timezone.now() - timedelta(seconds=RESET_MIN_INTERVAL_S)
    with transaction.atomic():
        if PasswordLink.objects.filter(user=user, purpose=PasswordLink.Purpose.RESET, created_at__gt=recent).exists():
            return None
        token = _link_create(user=user, purpose=PasswordLink.Purpose.RESET, ttl=RESET_TTL)
        audit_record(action="auth.password_reset_requested", actor="anonymous", obj=user,
                     data={"user": user.get_username()})
    return user, token


# ---------------------------------------------------------------- invitations and roles


def _check_role(consortium: Consortium, role: str, hospital: Hospital | None) -> None:
    if role not in Role.values:
        raise PeopleError(f"unknown role {role!r}: choose one of {', '.join(Role.values)}")
    if role == Role.HOSPITAL_ADMIN and hospital is None:
        raise PeopleError("a hospital admin acts for one hospital: choose it")
    if role != Role.HOSPITAL_ADMIN and hospital is not None:
        raise PeopleError("only hospital admins are bound to a hospital: leave the hospital empty for this role")
    if hospital is not None and hospital.consortium_id != consortium.pk:
        raise PeopleError("this hospital belongs to another consortium")


def person_invite(*, consortium: Consortium, email: str, full_name: str, role: str, hospital: Hospital | None,
                  by) -> tuple[object, str | None]:
    """Give a person a role in the consortium. A new person gets an account without a password and
    a one-time link to set it (returned in the clear, once, for the invitation e-mail); someone who
    already has an account gets the role (and no link, unless they never set their password)."""
    _check_role(consortium, role, hospital)
    email = email.strip()
    user_model = get_user_model()
    actor = actor_label(user=by)
    with transaction.atomic():
        user = user_model.objects.select_for_update().filter(email__iexact=email).first() \
            or user_model.objects.select_for_update().filter(username__iexact=email).first()
        created = user is None
        if created:
            first, _, last = full_name.strip().partition(" ")
            user = user_model(username=email.lower(), email=email, first_name=first[:150], last_name=last[:150])
            user.set_unusable_password()
            user.save()
        if Membership.objects.filter(user=user, consortium=consortium, role=role, hospital=hospital).exists():
            raise PeopleError(f"{display_name(user)} already has this role")
        membership_grant(user=user, consortium=consortium, role=role, hospital=hospital, actor=actor)
        token = None
        if created or not user.has_usable_password():
            token = _link_create(user=user, purpose=PasswordLink.Purpose.INVITATION, ttl=INVITATION_TTL,
                                 consortium=consortium, created_by=by)
        audit_record(action="person.invited", actor=actor, obj=user, consortium_id=consortium.pk,
                     hospital_id=hospital.pk if hospital else None,
                     data={"user": user.get_username(), "email": email, "role": role, "new_account": created,
                           "link_sent": token is not None})
    return user, token


def invitation_resend(*, user, consortium: Consortium, by) -> str:
    """A fresh invitation link for a member who has not set a password yet (the old link stops working)."""
    if user.has_usable_password():
        raise PeopleError(f"{display_name(user)} has already set a password: they can use 'Forgot your password?'")
    with transaction.atomic():
        token = _link_create(user=user, purpose=PasswordLink.Purpose.INVITATION, ttl=INVITATION_TTL,
                             consortium=consortium, created_by=by)
        audit_record(action="person.invitation_resent", actor=actor_label(user=by), obj=user,
                     consortium_id=consortium.pk, data={"user": user.get_username()})
    return token


def _admins_left(membership: Membership) -> int:
    return (Membership.objects.filter(consortium_id=membership.consortium_id, role=Role.CONSORTIUM_ADMIN)
            .exclude(pk=membership.pk).count())


def member_change(*, membership: Membership, role: str, hospital: Hospital | None, by) -> Membership:
    """Change one role of a member (recorded as membership.changed, with what it was before)."""
    _check_role(membership.consortium, role, hospital)
    if membership.role == Role.CONSORTIUM_ADMIN and role != Role.CONSORTIUM_ADMIN and not _admins_left(membership):
        raise PeopleError("this is the consortium's last admin: make someone else consortium admin first")
    if Membership.objects.filter(user_id=membership.user_id, consortium_id=membership.consortium_id, role=role,
                                 hospital=hospital).exclude(pk=membership.pk).exists():
        raise PeopleError(f"{display_name(membership.user)} already has this role")
    membership.role, membership.hospital = role, hospital
    return membership_save(membership=membership, actor=actor_label(user=by))


def member_remove(*, membership: Membership, by) -> None:
    """Remove one role of a member (membership.revoked). A person left with no role anywhere can no
    longer use their pending links."""
    if membership.role == Role.CONSORTIUM_ADMIN and not _admins_left(membership):
        raise PeopleError("this is the consortium's last admin: make someone else consortium admin first")
    with transaction.atomic():
        user = membership.user
        membership_revoke(membership=membership, actor=actor_label(user=by))
        if not Membership.objects.filter(user=user).exists():
            PasswordLink.objects.filter(user=user, used_at__isnull=True, expires_at__gt=timezone.now()) \
                .update(expires_at=timezone.now())
