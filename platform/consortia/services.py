"""Consortium, hospital and node-identity state changes; each with its audit event."""

from __future__ import annotations

import base64
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from audit.repeated import record_repeated
from audit.services import actor_label, audit_record

from .models import Consortium, EnrolmentToken, Hospital, Membership
from .signals import node_revoked
from .tokens import new_token, token_hash

# Refused enrolments with the same token (or with unknown tokens) and reason within this many seconds
# are one audit event plus one summary with their count: a node retrying, or anyone guessing
# tokens, cannot flood the append-only trail.
ENROL_REFUSAL_WINDOW_S = 15 * 60

class EnrolmentError(Exception):
    """An enrolment attempt that cannot proceed; the message says why and what to do."""


def consortium_create(*, name: str, description: str = "", actor: str = "system") -> Consortium:
    with transaction.atomic():
        c = Consortium.objects.create(name=name, description=description)
        audit_record(action="consortium.created", actor=actor, obj=c, consortium_id=c.pk, data={"name": name})
    return c


def hospital_create(*, consortium: Consortium, name: str, actor: str = "system",
                    max_epsilon: float | None = None, allowed_models: list | None = None,
                    max_rounds: int | None = None) -> Hospital:
    with transaction.atomic():
        h = Hospital.objects.create(consortium=consortium, name=name, max_epsilon=max_epsilon,
                                    allowed_models=allowed_models or [], max_rounds=max_rounds)
        audit_record(action="hospital.created", actor=actor, obj=h, consortium_id=consortium.pk,
                     hospital_id=h.pk, data={"name": name})
    return h


def membership_grant(*, user, consortium: Consortium, role: str, hospital: Hospital | None = None,
                     actor: str = "system") -> Membership:
    with transaction.atomic():
        m, _ = Membership.objects.get_or_create(user=user, consortium=consortium, role=role, hospital=hospital)
        audit_record(action="membership.granted", actor=actor, obj=m, consortium_id=consortium.pk,
                     hospital_id=hospital.pk if hospital else None,
                     data={"user": user.get_username(), "role": role})
    return m


def _membership_data(m: Membership) -> dict:
    return {"user": m.user.get_username(), "role": m.role, "consortium_id": m.consortium_id, "hospital_id": m.hospital_id}


def membership_save(*, membership: Membership, actor: str) -> Membership:
    """Store a role as edited (e.g. in Django admin): a new one is a grant, an edited one a
    change recording what it was before. Membership.save() refuses a cross-consortium hospital."""
    with transaction.atomic():
        before = Membership.objects.select_for_update().filter(pk=membership.pk).first() if membership.pk else None
        membership.save()
        data = _membership_data(membership)
        if before is not None:
            data["before"] = _membership_data(before)
        audit_record(action="membership.changed" if before is not None else "membership.granted", actor=actor,
                     obj=membership, consortium_id=membership.consortium_id, hospital_id=membership.hospital_id,
                     data=data)
    return membership


def membership_revoke(*, membership: Membership, actor: str) -> None:
    with transaction.atomic():
        data = _membership_data(membership)
        audit_record(action="membership.revoked", actor=actor, obj=membership, consortium_id=membership.consortium_id,
                     hospital_id=membership.hospital_id, data=data)
        membership.delete()


def enrolment_token_create(*, hospital: Hospital, user=None, ttl_hours: int = 72) -> tuple[EnrolmentToken, str]:
    """Create a one-time enrolment token; the clear token is returned once and never stored."""
    token = new_token("enr")
    with transaction.atomic():
        et = EnrolmentToken.objects.create(hospital=hospital, token_hash=token_hash(token), created_by=user,
                                           expires_at=timezone.now() + timedelta(hours=ttl_hours))
        audit_record(action="enrolment_token.created", actor=actor_label(user=user), obj=et,
                     consortium_id=hospital.consortium_id, hospital_id=hospital.pk,
                     data={"expires_at": et.expires_at.isoformat()})
    return et, token


def enrolment_token_revoke(*, token: EnrolmentToken, actor: str) -> bool:
    """Revoke one unused enrolment token (False when it was already used, revoked or expired)."""
    now = timezone.now()
    with transaction.atomic():
        updated = EnrolmentToken.objects.filter(pk=token.pk, used_at__isnull=True, revoked_at__isnull=True,
                                                expires_at__gt=now).update(revoked_at=now)
        if updated:
            audit_record(action="enrolment_token.revoked", actor=actor, obj=token,
                         consortium_id=token.hospital.consortium_id, hospital_id=token.hospital_id, data={})
    return bool(updated)


HOSPITAL_LIMIT_FIELDS = ("max_epsilon", "allowed_models", "max_rounds")


def hospital_limits_update(*, hospital: Hospital, max_epsilon: float | None, allowed_models: list[str],
                           max_rounds: int | None, actor: str) -> Hospital:
    """Declare the hospital's own limits in the portal (hospital.limits_changed, before and after).
    The node enforces its own node.toml [limits] whatever is declared here."""
    with transaction.atomic():
        h = Hospital.objects.select_for_update().get(pk=hospital.pk)
        before = {f: getattr(h, f) for f in HOSPITAL_LIMIT_FIELDS}
        h.max_epsilon, h.allowed_models, h.max_rounds = max_epsilon, list(allowed_models), max_rounds
        after = {f: getattr(h, f) for f in HOSPITAL_LIMIT_FIELDS}
        if after != before:
            h.save(update_fields=list(HOSPITAL_LIMIT_FIELDS))
            audit_record(action="hospital.limits_changed", actor=actor, obj=h, consortium_id=h.consortium_id,
                         hospital_id=h.pk, data={"before": before, "after": after})
    return h


def node_enrol(*, enrolment_token: str, public_key: str, node_version: str) -> tuple[Hospital, str]:
    """Bind a node to its hospital: consume the one-time token, store the node's public key and
    the hash of a fresh node API token. Returns the clear node token (shown once).
    A refused attempt is itself an audit event (node.enrol_refused; the token is never recorded),
    summarised per token and reason (audit.repeated): one event per window, with a count."""
    try:
        return _node_enrol(enrolment_token=enrolment_token, public_key=public_key, node_version=node_version)
    except EnrolmentError as exc:
        with transaction.atomic():
            et = EnrolmentToken.objects.select_related("hospital").filter(token_hash=token_hash(enrolment_token)).first()
            h = et.hospital if et is not None else None
            record_repeated(key=f"node.enrol_refused|{et.pk if et else '-'}|{str(exc)[:200]}",
                            window_s=ENROL_REFUSAL_WINDOW_S, action="node.enrol_refused", actor="anonymous", obj=h,
                            consortium_id=h.consortium_id if h else None, hospital_id=h.pk if h else None,
                            data={"reason": str(exc), "enrolment_token_id": et.pk if et else None,
                                  "node_version": str(node_version)[:64]})
        raise


def _node_enrol(*, enrolment_token: str, public_key: str, node_version: str) -> tuple[Hospital, str]:
    try:
        raw = base64.b64decode(public_key, validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise EnrolmentError("public_key must be a base64-encoded 32-byte X25519 public key")
    now = timezone.now()
    node_token = new_token("node")
    with transaction.atomic():
        et = (EnrolmentToken.objects.select_for_update().select_related("hospital")
              .filter(token_hash=token_hash(enrolment_token)).first())
        if et is None:
            raise EnrolmentError("unknown enrolment token: ask your consortium admin for a new one in the portal "
                                 "(Hospitals page)")
        if et.revoked_at is not None:
            raise EnrolmentError("this enrolment token was revoked in the portal; ask your consortium admin for a "
                                 "new one")
        if et.used_at is not None:
            raise EnrolmentError("this enrolment token was already used; each token enrols one node once — "
                                 "create a new one in the portal")
        if et.expires_at < now:
            raise EnrolmentError("this enrolment token has expired; create a new one in the portal")
        updated = EnrolmentToken.objects.filter(pk=et.pk, used_at__isnull=True, revoked_at__isnull=True) \
            .update(used_at=now)
        if not updated:
            raise EnrolmentError("this enrolment token was already used")
        h = et.hospital
        h.public_key = public_key
        h.token_hash = token_hash(node_token)
        h.enrolled_at = now
        h.revoked_at = None
        h.node_version = node_version[:64]
        h.save(update_fields=["public_key", "token_hash", "enrolled_at", "revoked_at", "node_version"])
        audit_record(action="node.enrolled", actor=actor_label(hospital=h), obj=h, consortium_id=h.consortium_id,
                     hospital_id=h.pk, data={"node_version": node_version[:64], "public_key": public_key,
                                             "enrolment_token_id": et.pk})
    return h, node_token


def node_revoke(*, hospital: Hospital, actor: str) -> list[str]:
    """Revoke a node: its token stops working, its unused enrolment tokens too, and (through the
    node_revoked signal) it is withdrawn from the studies it takes part in. Returns sentences
    saying what followed, for the person who revoked it."""
    now = timezone.now()
    with transaction.atomic():
        Hospital.objects.filter(pk=hospital.pk).update(revoked_at=now, token_hash="")
        unused = EnrolmentToken.objects.filter(hospital=hospital, used_at__isnull=True, revoked_at__isnull=True,
                                               expires_at__gt=now)
        token_ids = list(unused.values_list("pk", flat=True))
        unused.update(revoked_at=now)
        audit_record(action="node.revoked", actor=actor, obj=hospital, consortium_id=hospital.consortium_id,
                     hospital_id=hospital.pk, data={"enrolment_tokens_revoked": token_ids})
        notes = [f"{len(token_ids)} unused enrolment token(s) revoked."] if token_ids else []
        for _receiver, said in node_revoked.send(sender=Hospital, hospital=hospital, actor=actor):
            notes.extend(said or [])
    return notes


def node_heartbeat(*, hospital: Hospital, node_version: str, status: dict) -> None:
    # Heartbeats are liveness, not state changes of the study: no audit event (they would flood it).
    Hospital.objects.filter(pk=hospital.pk).update(last_heartbeat=timezone.now(), node_version=node_version[:64],
                                                   node_status=status if isinstance(status, dict) else {})
