"""Personal API tokens for the researcher REST API: created, listed and revoked in the portal.

A token acts as its user: every request is checked against the user's roles at that moment
(studies/access.py), so removing someone's role narrows their tokens at once. Only the SHA-256 of a
token is stored; the clear token is shown once when it is created. Creation and revocation are
audit events.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from audit.services import actor_label, audit_record

from .models import ApiToken, Membership
from .tokens import new_token, token_hash

PREFIX = "fpt"
MAX_ACTIVE_PER_USER = 20
# last_used_at is written at most this often per token (a script polling every second must not
# turn every request into a write).
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiTokenError(Exception):
    """A token request that cannot be granted; the message says why."""


def _consortium_of(user) -> int | None:
    ids = set(Membership.objects.filter(user=user).values_list("consortium_id", flat=True))
    return ids.pop() if len(ids) == 1 else None


def api_token_create(*, user, name: str, days: int | None) -> tuple[ApiToken, str]:
    """A new token for ``user`` (expiring after ``days``, or never for None); the clear token is returned once."""
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ApiTokenError("give the token a name of 1 to 100 characters (what script or machine uses it)")
    if days is not None and not 1 <= days <= 366:
        raise ApiTokenError("a token expires after 1 to 366 days (or never)")
    now = timezone.now()
    with transaction.atomic():
        active = ApiToken.objects.select_for_update().filter(user=user, revoked_at__isnull=True)
        if sum(t.state == "active" for t in active) >= MAX_ACTIVE_PER_USER:
            raise ApiTokenError(f"you already have {MAX_ACTIVE_PER_USER} active tokens: revoke one you no longer use")
        clear = new_token(PREFIX)
        tok = ApiToken.objects.create(user=user, name=name, token_hash=token_hash(clear), prefix=clear[:10],
                                      expires_at=now + timedelta(days=days) if days else None)
        audit_record(action="api_token.created", actor=actor_label(user=user), obj=tok,
                     consortium_id=_consortium_of(user),
                     data={"user": user.get_username(), "name": name, "prefix": tok.prefix,
                           "expires_at": tok.expires_at.isoformat() if tok.expires_at else None})
    return tok, clear


def api_token_revoke(*, token: ApiToken, by) -> None:
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if updated:
            audit_record(action="api_token.revoked", actor=actor_label(user=by), obj=token,
                         consortium_id=_consortium_of(token.user),
                         data={"user": token.user.get_username(), "name": token.name, "prefix": token.prefix})


def api_token_user(clear: str):
    """The active user a clear token belongs to, or None (unknown, revoked, expired, inactive user)."""
    if not clear.startswith(PREFIX + "_") or len(clear) > 200:
        return None
    now = timezone.now()
    tok = ApiToken.objects.select_related("user").filter(token_hash=token_hash(clear), revoked_at__isnull=True).first()
    if tok is None or (tok.expires_at is not None and tok.expires_at <= now) or not tok.user.is_active:
        return None
    if tok.last_used_at is None or now - tok.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=tok.pk).update(last_used_at=now)
    return tok.user
