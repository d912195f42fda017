"""Recruitment and keys: hospitals' decisions, the custodian's encryption context and sealed
keys, and each hospital's acknowledgement that it holds the key."""

from __future__ import annotations

import hashlib

from django.db import transaction
from django.utils import timezone

from audit.services import actor_label
from consortia.models import Hospital
from fedproto.codec import get_codec
from fedproto.errors import CodecError

from ..models import HEContext, Participation, SealedKey, Study
from .common import _audit_refusal, _study_audit, require_approved
from .errors import ServiceError
from .lifecycle import _advance_after_commit
from .recruitment_deadline import recruitment_due


def participation_decide(*, participation: Participation, decision: str, actor: str, reason: str = "") -> Participation:
    if decision not in ("approve", "decline"):
        raise ServiceError('decision must be "approve" or "decline"', code="invalid", status=422)
    study = participation.study
    with transaction.atomic():
        p = Participation.objects.select_for_update().get(pk=participation.pk)
        current = Study.objects.get(pk=study.pk)
        if current.status != Study.Status.RECRUITING:
            raise ServiceError(f"study {study.name!r} is not recruiting (it is {current.status}); decisions are closed",
                               code="wrong_state")
        if recruitment_due(current, timezone.now()):
            raise ServiceError(f"recruitment for study {study.name!r} closed at its deadline "
                               f"({current.recruitment_deadline.isoformat()}); decisions are closed",
                               code="recruitment_closed")
        if p.state != Participation.State.INVITED:
            if (p.state == Participation.State.APPROVED) == (decision == "approve"):
                return p  # idempotent repeat
            raise ServiceError(f"this hospital already {p.state} the study", code="already_decided")
        p.decided_by = actor[:200]
        p.decided_at = timezone.now()
        p.reason = reason[:2000]
        if decision == "approve":
            p.state = Participation.State.APPROVED
            p.approved_order = Participation.objects.filter(study=study, state=Participation.State.APPROVED).count() + 1
        else:
            p.state = Participation.State.DECLINED
        p.save()
        if decision == "approve" and Study.objects.filter(pk=study.pk, custodian__isnull=True).update(custodian=p.hospital):
            _study_audit(study, "study.custodian_assigned", actor, hospital_id=p.hospital_id,
                         data={"hospital": p.hospital.name})
        _study_audit(study, f"participation.{p.state}", actor, obj=p, hospital_id=p.hospital_id,
                     data={"hospital": p.hospital.name, "reason": p.reason})
        _advance_after_commit(study)
    return p


def he_context_fetch(*, study: Study, hospital: Hospital) -> HEContext:
    require_approved(study, hospital, "fetch the encryption context")
    ctx = HEContext.objects.filter(study=study).first()
    if ctx is None:
        raise ServiceError("the study has no encryption context yet", code="not_ready", status=404)
    return ctx


def he_context_publish(*, study: Study, hospital: Hospital, codec_name: str, public_params: bytes) -> HEContext:
    require_approved(study, hospital, "publish the encryption context")
    if study.custodian_id != hospital.pk:
        _audit_refusal(study, "he_context.rejected", hospital, "not the study's key custodian", code="not_custodian")
        raise ServiceError("only the study's key custodian publishes the encryption context", code="not_custodian", status=403)
    if codec_name != study.encryption["codec"]:
        _audit_refusal(study, "he_context.rejected", hospital, f"wrong codec {codec_name!r}", code="wrong_codec")
        raise ServiceError(f"this study uses codec {study.encryption['codec']!r}, not {codec_name!r}", code="wrong_codec",
                           status=422)
    codec = get_codec(codec_name)
    try:
        codec.load_params(public_params)  # refuses anything but a parameters-only blob
    except CodecError as exc:
        with transaction.atomic():
            _study_audit(study, "he_context.rejected", actor_label(hospital=hospital), hospital_id=hospital.pk,
                         data={"reason": str(exc)})
        raise ServiceError(f"public_params rejected: {exc}", code="invalid_context", status=422) from None
    sha = hashlib.sha256(public_params).hexdigest()
    with transaction.atomic():
        existing = HEContext.objects.filter(study=study).first()
        if existing is not None:
            if existing.sha256 == sha:
                return existing
            raise ServiceError("the study's encryption context is already published and cannot change",
                               code="already_published")
        ctx = HEContext.objects.create(study=study, codec=codec_name, public_params=public_params, sha256=sha,
                                       published_by=hospital)
        Participation.objects.filter(study=study, hospital=hospital).update(key_acked_at=timezone.now())
        _study_audit(study, "he_context.published", actor_label(hospital=hospital), obj=ctx,
                     hospital_id=hospital.pk, data={"codec": codec_name, "sha256": sha, "bytes": len(public_params),
                                                    "parameters": codec.describe(study.encryption)})
        _advance_after_commit(study)
    return ctx


def sealed_keys_store(*, study: Study, hospital: Hospital, keys: list[tuple[int, bytes]]) -> int:
    require_approved(study, hospital, "relay sealed keys")
    if study.custodian_id != hospital.pk:
        raise ServiceError("only the study's key custodian relays sealed keys", code="not_custodian", status=403)
    approved = set(Participation.objects.filter(study=study, state=Participation.State.APPROVED)
                   .values_list("hospital_id", flat=True))
    stored = 0
    with transaction.atomic():
        for hid, sealed in keys:
            if hid not in approved or hid == hospital.pk:
                raise ServiceError(f"hospital {hid} is not an approved participant needing a key", code="bad_recipient",
                                   status=422)
            if not 48 <= len(sealed) <= 16 * 1024 * 1024:
                raise ServiceError(f"sealed key for hospital {hid} has an implausible size ({len(sealed)} bytes)",
                                   code="bad_sealed_key", status=422)
            _, created = SealedKey.objects.get_or_create(study=study, recipient_id=hid, defaults={"sealed": sealed})
            if created:
                stored += 1
                _study_audit(study, "sealed_key.relayed", actor_label(hospital=hospital), hospital_id=hid,
                             data={"recipient": hid, "bytes": len(sealed),
                                   "sha256": hashlib.sha256(sealed).hexdigest()})
    return stored


def sealed_key_fetch(*, study: Study, hospital: Hospital) -> SealedKey:
    require_approved(study, hospital, "fetch a sealed key")
    sk = SealedKey.objects.filter(study=study, recipient=hospital).first()
    if sk is None:
        raise ServiceError("no sealed key for this node yet: the custodian has not relayed it", code="not_ready", status=404)
    if sk.fetched_at is None:
        with transaction.atomic():
            if SealedKey.objects.filter(pk=sk.pk, fetched_at__isnull=True).update(fetched_at=timezone.now()):
                _study_audit(study, "sealed_key.fetched", actor_label(hospital=hospital), obj=sk,
                             hospital_id=hospital.pk)
    return sk


def key_ack(*, study: Study, hospital: Hospital, public_params_sha256: str) -> None:
    require_approved(study, hospital, "acknowledge the study key")
    ctx = HEContext.objects.filter(study=study).first()
    if ctx is None:
        raise ServiceError("the study has no encryption context yet", code="not_ready")
    if public_params_sha256 != ctx.sha256:
        _audit_refusal(study, "key.rejected", hospital, "the node's key does not match the published context",
                       public_params_sha256=str(public_params_sha256)[:64], expected=ctx.sha256)
        raise ServiceError("the key you hold does not match the study's published context (sha256 differs)",
                           code="context_mismatch", status=422)
    with transaction.atomic():
        n = Participation.objects.filter(study=study, hospital=hospital, state=Participation.State.APPROVED,
                                         key_acked_at__isnull=True).update(key_acked_at=timezone.now())
        if n:
            _study_audit(study, "key.acknowledged", actor_label(hospital=hospital), hospital_id=hospital.pk,
                         data={"public_params_sha256": public_params_sha256})
            _advance_after_commit(study)


