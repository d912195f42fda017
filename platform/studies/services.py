"""Study lifecycle: every state change happens here, in a transaction, with its audit event.

Tasks (tasks.py) and API views call these functions; they never change state themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Iterable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record
from consortia.models import Consortium, Hospital
from fedproto import wire
from fedproto.codec import DEFAULT_CODEC, get_codec
from fedproto.errors import CodecError, SpecError
from fedproto.privacy import validate_privacy
from fedproto.schema import validate_schema
from fedproto.specs import validate_model_spec
from fedproto.specs import n_params as spec_n_params
from fedproto.study import MAX_LOCAL_EPOCHS, MAX_ROUNDS

from . import worksignal
from .models import (Aggregate, AggregateChunk, EncryptedUpdate, FinalModel, HEContext, Participation, PrivacySpend,
                     Round, RoundReport, SealedKey, Study, TrainingJob)

log = logging.getLogger(__name__)

TERMINAL = {Study.Status.COMPLETED, Study.Status.FAILED, Study.Status.CANCELLED}


class ServiceError(Exception):
    """A request that cannot be carried out in the current state. status is the HTTP status to use."""

    def __init__(self, message: str, *, code: str = "invalid", status: int = 409):
        super().__init__(message)
        self.code = code
        self.status = status


def _on_commit(task, *args) -> None:
    transaction.on_commit(lambda: task.delay(*args))


def _tasks():
    from . import tasks  # local import: tasks imports services

    return tasks


# Audit actions whose state change only alters the work of the hospital they name (and, for a
# decision, the custodian's key relay): they wake that node's long-poll, not every node's.
_NODE_LOCAL_ACTIONS = {"update.accepted", "update.rejected", "privacy.spent", "model.attested", "model.released",
                       "model.release_refused", "sealed_key.fetched", "sealed_key.relayed", "key.acknowledged",
                       "key.rejected", "job.refused", "he_context.published", "he_context.rejected",
                       "participation.approved", "participation.declined"}


def _signal_keys(study: Study, action: str, hospital_id) -> set[str]:
    if hospital_id is None or action not in _NODE_LOCAL_ACTIONS:
        return {worksignal.GLOBAL}
    keys = {worksignal.hospital_key(hospital_id)}
    if action.startswith("participation.") and study.custodian_id:
        keys.add(worksignal.hospital_key(study.custodian_id))  # its seal_keys recipients changed
    return keys


def _study_audit(study: Study, action: str, actor: str, obj=None, hospital_id=None, data=None):
    # Every state change records an audit event: wake the node long-polls once it is committed.
    worksignal.bump_on_commit(_signal_keys(study, action, hospital_id))
    return audit_record(action=action, actor=actor, obj=obj if obj is not None else study, study_id=study.pk,
                        consortium_id=study.consortium_id, hospital_id=hospital_id, data=data)


# ---------------------------------------------------------------- study definition

def _int_in(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{name} must be an integer between {lo} and {hi}, got {value!r}")
    return value


def _float_in(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < float(value) <= hi:
        raise SpecError(f"{name} must be a number in ({lo}, {hi}], got {value!r}")
    return float(value)


def validate_study_config(*, schema, model_spec, rounds, local_epochs, batch_size, learning_rate, privacy,
                          encryption, quorum, round_deadline_s, n_hospitals: int) -> dict:
    """Validate a study definition with the shared rules; raise SpecError saying what to fix."""
    schema = validate_schema(schema)
    model_spec = validate_model_spec(model_spec, schema["task"])
    privacy = validate_privacy(privacy)
    enc = encryption if isinstance(encryption, dict) else {}
    if not isinstance(encryption, dict):
        raise SpecError(f'encryption must be an object such as {{"codec": "{DEFAULT_CODEC}"}}')
    try:
        codec = get_codec(enc.get("codec", DEFAULT_CODEC))
    except (KeyError, ValueError) as exc:
        raise SpecError(f"unknown encryption codec {enc.get('codec')!r}: {exc}") from None
    enc = codec.validate_config({**enc, "codec": codec.name})
    if n_hospitals < 1:
        raise SpecError("invite at least one hospital")
    if n_hospitals > enc.get("max_hospitals", n_hospitals):
        raise SpecError(f"{n_hospitals} hospitals invited but the encryption is sized for at most "
                        f"{enc['max_hospitals']}; raise encryption.max_hospitals")
    return {
        "schema": schema, "model_spec": model_spec, "privacy": privacy, "encryption": enc,
        "rounds": _int_in("rounds", rounds, 1, MAX_ROUNDS),
        "local_epochs": _int_in("local_epochs", local_epochs, 1, MAX_LOCAL_EPOCHS),
        "batch_size": _int_in("batch_size", batch_size, 1, 100_000),
        "learning_rate": _float_in("learning_rate", learning_rate, 0.0, 10.0),
        "quorum": _int_in("quorum", quorum, 1, n_hospitals),
        "round_deadline_s": _int_in("round_deadline_s", round_deadline_s, 5, 7 * 24 * 3600),
    }


def study_create(*, consortium: Consortium, name: str, hospitals: Iterable[Hospital], schema: dict,
                 model_spec: dict, rounds: int, local_epochs: int, batch_size: int, learning_rate: float,
                 privacy: dict, encryption: dict, quorum: int, round_deadline_s: int, owner=None,
                 purpose: str = "", seed: int | None = None, actor: str = "system") -> Study:
    hospitals = list(hospitals)
    if not name or len(name) > 200:
        raise SpecError("study name must be 1 to 200 characters")
    foreign = [h.name for h in hospitals if h.consortium_id != consortium.pk]
    if foreign:
        raise SpecError(f"hospital(s) {foreign} are not members of consortium {consortium.name}")
    if len({h.pk for h in hospitals}) != len(hospitals):
        raise SpecError("a hospital is invited twice")
    cfg = validate_study_config(schema=schema, model_spec=model_spec, rounds=rounds, local_epochs=local_epochs,
                                batch_size=batch_size, learning_rate=learning_rate, privacy=privacy,
                                encryption=encryption, quorum=quorum, round_deadline_s=round_deadline_s,
                                n_hospitals=len(hospitals))
    with transaction.atomic():
        if Study.objects.filter(consortium=consortium, name=name).exists():
            raise SpecError(f"a study named {name!r} already exists in this consortium; choose another name")
        study = Study.objects.create(
            consortium=consortium, name=name, purpose=purpose, owner=owner, schema=cfg["schema"],
            model_spec=cfg["model_spec"], rounds=cfg["rounds"], local_epochs=cfg["local_epochs"],
            batch_size=cfg["batch_size"], learning_rate=cfg["learning_rate"],
            epsilon=cfg["privacy"]["epsilon"], delta=cfg["privacy"]["delta"],
            clip_norm=cfg["privacy"]["clip_norm"], accountant=cfg["privacy"]["accountant"],
            encryption=cfg["encryption"], quorum=cfg["quorum"], round_deadline_s=cfg["round_deadline_s"],
            seed=seed if seed is not None else secrets.randbelow(2 ** 31),
            n_params=spec_n_params(cfg["model_spec"], len(cfg["schema"]["features"])),
        )
        for h in hospitals:
            Participation.objects.create(study=study, hospital=h)
        from .selectors import study_config

        _study_audit(study, "study.created", actor, data={"config": study_config(study),
                                                          "invited": [h.name for h in hospitals]})
    return study


def study_open_recruitment(*, study: Study, actor: str) -> Study:
    """draft -> recruiting: invitations become visible to the hospitals."""
    with transaction.atomic():
        n = Study.objects.filter(pk=study.pk, status=Study.Status.DRAFT).update(status=Study.Status.RECRUITING)
        if not n:
            raise ServiceError(f"study is {Study.objects.get(pk=study.pk).status}, only a draft can be started",
                               code="wrong_state")
        _study_audit(study, "study.recruiting", actor)
    study.refresh_from_db()
    return study


def _set_status(study: Study, *, frm: Iterable[str], to: str, actor: str, action: str, reason: str = "") -> bool:
    fields = {"status": to, "status_reason": reason}
    if to in TERMINAL:
        fields["finished_at"] = timezone.now()
    if to == Study.Status.RUNNING and study.started_at is None:
        fields["started_at"] = timezone.now()
    n = Study.objects.filter(pk=study.pk, status__in=list(frm)).update(**fields)
    if n:
        _study_audit(study, action, actor, data={"from": list(frm), "to": to, "reason": reason})
        study.refresh_from_db()
    return bool(n)


def study_pause(*, study: Study, actor: str) -> Study:
    with transaction.atomic():
        if not _set_status(study, frm=[Study.Status.RUNNING], to=Study.Status.PAUSED, actor=actor, action="study.paused"):
            raise ServiceError(f"only a running study can be paused (this one is {study.status})", code="wrong_state")
    return study


def study_resume(*, study: Study, actor: str) -> Study:
    with transaction.atomic():
        if not _set_status(study, frm=[Study.Status.PAUSED], to=Study.Status.RUNNING, actor=actor, action="study.resumed"):
            raise ServiceError(f"only a paused study can be resumed (this one is {study.status})", code="wrong_state")
        _on_commit(_tasks().advance_study, study.pk)
    return study


def study_cancel(*, study: Study, actor: str, reason: str = "") -> Study:
    with transaction.atomic():
        if not _set_status(study, frm=[Study.Status.DRAFT, Study.Status.RECRUITING, Study.Status.RUNNING,
                                       Study.Status.PAUSED], to=Study.Status.CANCELLED, actor=actor,
                           action="study.cancelled", reason=reason or "cancelled by the study owner"):
            raise ServiceError(f"the study is already {study.status}", code="wrong_state")
        _expire_open_jobs(study, reason="study cancelled")
    return study


def study_fail(*, study: Study, reason: str, actor: str = "system") -> None:
    with transaction.atomic():
        if _set_status(study, frm=[Study.Status.RECRUITING, Study.Status.RUNNING, Study.Status.PAUSED],
                       to=Study.Status.FAILED, actor=actor, action="study.failed", reason=reason):
            _expire_open_jobs(study, reason=f"study failed: {reason}")


def _expire_open_jobs(study: Study, *, reason: str) -> None:
    TrainingJob.objects.filter(round__study=study, status=TrainingJob.Status.DISPATCHED).update(
        status=TrainingJob.Status.EXPIRED, reason=reason, finished_at=timezone.now())
    Round.objects.filter(study=study, status__in=[Round.Status.OPEN, Round.Status.COLLECTING]).update(
        status=Round.Status.FAILED, status_reason=reason, closed_at=timezone.now())


# ---------------------------------------------------------------- recruitment and keys

def participation_decide(*, participation: Participation, decision: str, actor: str, reason: str = "") -> Participation:
    if decision not in ("approve", "decline"):
        raise ServiceError('decision must be "approve" or "decline"', code="invalid", status=422)
    study = participation.study
    with transaction.atomic():
        p = Participation.objects.select_for_update().get(pk=participation.pk)
        if Study.objects.get(pk=study.pk).status != Study.Status.RECRUITING:
            raise ServiceError(f"study {study.name!r} is not recruiting (it is {study.status}); decisions are closed",
                               code="wrong_state")
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


def _audit_refusal(study: Study, action: str, hospital: Hospital, reason: str, **data) -> None:
    """Record a refused request in its own transaction (the refusal itself changes no state)."""
    with transaction.atomic():
        _study_audit(study, action, f"node:{hospital.pk}:{hospital.name}", hospital_id=hospital.pk,
                     data={"reason": reason, **data})


def he_context_publish(*, study: Study, hospital: Hospital, codec_name: str, public_params: bytes) -> HEContext:
    if study.custodian_id != hospital.pk:
        _audit_refusal(study, "he_context.rejected", hospital, "not the study's key custodian", code="not_custodian")
        raise ServiceError("only the study's key custodian publishes the encryption context", code="not_custodian", status=403)
    if codec_name != study.encryption["codec"]:
        _audit_refusal(study, "he_context.rejected", hospital, f"wrong codec {codec_name!r}", code="wrong_codec")
        raise ServiceError(f"this study uses codec {study.encryption['codec']!r}, not {codec_name!r}", code="wrong_codec", status=422)
    codec = get_codec(codec_name)
    try:
        codec.load_params(public_params)  # refuses anything but a parameters-only blob
    except CodecError as exc:
        with transaction.atomic():
            _study_audit(study, "he_context.rejected", f"node:{hospital.pk}:{hospital.name}", hospital_id=hospital.pk,
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
        _study_audit(study, "he_context.published", f"node:{hospital.pk}:{hospital.name}", obj=ctx,
                     hospital_id=hospital.pk, data={"codec": codec_name, "sha256": sha, "bytes": len(public_params),
                                                    "parameters": codec.describe(study.encryption)})
        _advance_after_commit(study)
    return ctx


def sealed_keys_store(*, study: Study, hospital: Hospital, keys: list[tuple[int, bytes]]) -> int:
    if study.custodian_id != hospital.pk:
        raise ServiceError("only the study's key custodian relays sealed keys", code="not_custodian", status=403)
    approved = set(Participation.objects.filter(study=study, state=Participation.State.APPROVED)
                   .values_list("hospital_id", flat=True))
    stored = 0
    with transaction.atomic():
        for hid, sealed in keys:
            if hid not in approved or hid == hospital.pk:
                raise ServiceError(f"hospital {hid} is not an approved participant needing a key", code="bad_recipient", status=422)
            if not 48 <= len(sealed) <= 16 * 1024 * 1024:
                raise ServiceError(f"sealed key for hospital {hid} has an implausible size ({len(sealed)} bytes)",
                                   code="bad_sealed_key", status=422)
            _, created = SealedKey.objects.get_or_create(study=study, recipient_id=hid, defaults={"sealed": sealed})
            if created:
                stored += 1
                _study_audit(study, "sealed_key.relayed", f"node:{hospital.pk}:{hospital.name}", hospital_id=hid,
                             data={"recipient": hid, "bytes": len(sealed),
                                   "sha256": hashlib.sha256(sealed).hexdigest()})
    return stored


def sealed_key_fetch(*, study: Study, hospital: Hospital) -> SealedKey:
    sk = SealedKey.objects.filter(study=study, recipient=hospital).first()
    if sk is None:
        raise ServiceError("no sealed key for this node yet: the custodian has not relayed it", code="not_ready", status=404)
    if sk.fetched_at is None:
        with transaction.atomic():
            if SealedKey.objects.filter(pk=sk.pk, fetched_at__isnull=True).update(fetched_at=timezone.now()):
                _study_audit(study, "sealed_key.fetched", f"node:{hospital.pk}:{hospital.name}", obj=sk,
                             hospital_id=hospital.pk)
    return sk


def key_ack(*, study: Study, hospital: Hospital, public_params_sha256: str) -> None:
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
            _study_audit(study, "key.acknowledged", f"node:{hospital.pk}:{hospital.name}", hospital_id=hospital.pk,
                         data={"public_params_sha256": public_params_sha256})
            _advance_after_commit(study)


# ---------------------------------------------------------------- orchestration

def _advance_after_commit(study: Study) -> None:
    """Once this transaction commits, move the study on in this process: a recruitment step
    (decision, context, key acknowledgement) is a few rows, and a broker hop here was most of the
    time between the last key and round 1. The last of concurrent requests to commit sees every
    row; study_advance is idempotent under concurrency. On any error a Celery task retries it."""
    def run() -> None:
        try:
            study_advance(study_id=study.pk)
        except Exception:  # noqa: BLE001 - the request already succeeded; the task repairs it
            log.exception("advancing study %s after commit failed; enqueueing it", study.pk)
            _tasks().advance_study.delay(study.pk)

    transaction.on_commit(run)


def study_advance(*, study_id: int) -> None:
    """Move a study forward if it can: start running once set up, open the next round. Idempotent."""
    study = Study.objects.get(pk=study_id)
    if study.status == Study.Status.RECRUITING:
        parts = list(Participation.objects.filter(study=study))
        answered = all(p.state != Participation.State.INVITED for p in parts)
        approved = [p for p in parts if p.state == Participation.State.APPROVED]
        if answered and len(approved) < study.quorum:
            study_fail(study=study, reason=f"only {len(approved)} of {len(parts)} hospitals approved; the quorum is {study.quorum}")
            return
        ready = answered and HEContext.objects.filter(study=study).exists() and all(p.key_acked_at for p in approved)
        if ready:
            with transaction.atomic():
                if _set_status(study, frm=[Study.Status.RECRUITING], to=Study.Status.RUNNING, actor="system",
                               action="study.running",
                               reason=f"{len(approved)} hospitals approved and hold the key"):
                    round_open(study=study, number=1, attempt=1)
        return
    if study.status != Study.Status.RUNNING:
        return
    last = Round.objects.filter(study=study).order_by("-number", "-attempt").first()
    if last is None:
        with transaction.atomic():
            round_open(study=study, number=1, attempt=1)
    elif last.status == Round.Status.DONE:
        if last.number >= study.rounds:
            with transaction.atomic():
                _set_status(study, frm=[Study.Status.RUNNING], to=Study.Status.COMPLETED, actor="system",
                            action="study.completed", reason=f"{study.rounds} rounds done")
        else:
            with transaction.atomic():
                round_open(study=study, number=last.number + 1, attempt=1)
    elif last.status == Round.Status.FAILED:
        if last.attempt < study.max_round_attempts:
            with transaction.atomic():
                round_open(study=study, number=last.number, attempt=last.attempt + 1)
        else:
            study_fail(study=study, reason=f"round {last.number} failed {last.attempt} times: {last.status_reason}")


def round_open(*, study: Study, number: int, attempt: int) -> Round | None:
    """Open a round and dispatch one training job per approved hospital (inside a transaction)."""
    if Study.objects.filter(pk=study.pk, status=Study.Status.RUNNING).count() == 0:
        return None
    try:
        with transaction.atomic():
            rnd = Round.objects.create(study=study, number=number, attempt=attempt, status=Round.Status.COLLECTING,
                                       collecting_at=timezone.now(),
                                       deadline=timezone.now() + timedelta(seconds=study.round_deadline_s))
    except IntegrityError:
        return None  # already opened by a concurrent worker
    hospitals = list(Participation.objects.filter(study=study, state=Participation.State.APPROVED)
                     .select_related("hospital").values_list("hospital_id", flat=True))
    TrainingJob.objects.bulk_create([TrainingJob(round=rnd, hospital_id=h) for h in hospitals])
    _study_audit(study, "round.opened", "system", obj=rnd,
                 data={"round": number, "attempt": attempt, "jobs_dispatched": len(hospitals), "hospitals": hospitals,
                       "deadline": rnd.deadline.isoformat()})
    _on_commit(_tasks().close_round_at_deadline, rnd.pk)
    return rnd


def job_refuse(*, job: TrainingJob, hospital: Hospital, reason: str, code: str) -> TrainingJob:
    study = job.round.study
    with transaction.atomic():
        n = TrainingJob.objects.filter(pk=job.pk, hospital=hospital, status=TrainingJob.Status.DISPATCHED).update(
            status=TrainingJob.Status.REFUSED, reason=reason[:4000], reason_code=code[:32], finished_at=timezone.now())
        if not n:
            job.refresh_from_db()
            if job.status == TrainingJob.Status.REFUSED:
                return job
            raise ServiceError(f"job {job.pk} is {job.status}; it can no longer be refused", code="wrong_state")
        _study_audit(study, "job.refused", f"node:{hospital.pk}:{hospital.name}", obj=job, hospital_id=hospital.pk,
                     data={"round": job.round.number, "attempt": job.round.attempt, "code": code, "reason": reason[:4000]})
        _on_commit(_tasks().close_round, job.round_id)
    job.refresh_from_db()
    return job


DP_ENGINE_RE = re.compile(r"[A-Za-z0-9._-]{0,32}")
SPEND_FIELDS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "clip_norm", "accountant",
                "accountant_version")


def privacy_spend_record(*, job: TrainingJob, hospital: Hospital, spend: dict) -> PrivacySpend:
    study = job.round.study
    missing = [k for k in SPEND_FIELDS if k not in spend]
    if missing:
        raise ServiceError(f"privacy spend is missing {missing}", code="invalid", status=422)
    try:
        vals = {
            "epsilon": float(spend["epsilon"]), "delta": float(spend["delta"]),
            "noise_multiplier": float(spend["noise_multiplier"]), "sample_rate": float(spend["sample_rate"]),
            "steps": int(spend["steps"]), "clip_norm": float(spend["clip_norm"]),
            "accountant": str(spend["accountant"])[:32], "accountant_version": str(spend["accountant_version"])[:32],
            "epsilon_round": float(spend["epsilon_round"]) if spend.get("epsilon_round") is not None else None,
        }
    except (TypeError, ValueError):
        raise ServiceError("privacy spend values must be numbers (steps an integer)", code="invalid", status=422) from None
    engine = spend.get("dp_engine", "")
    if not isinstance(engine, str) or not DP_ENGINE_RE.fullmatch(engine):
        raise ServiceError(f"privacy spend dp_engine must be the node's DP-SGD engine name (letters, digits, '.', '_', "
                           f"'-'; at most 32), e.g. \"fused\" or \"ew\"; got {str(engine)[:40]!r}", code="invalid",
                           status=422)
    vals["dp_engine"] = engine
    if not (vals["epsilon"] >= 0 and 0 < vals["sample_rate"] <= 1 and vals["steps"] >= 0 and vals["noise_multiplier"] >= 0):
        raise ServiceError("privacy spend values out of range", code="invalid", status=422)
    with transaction.atomic():
        existing = PrivacySpend.objects.filter(job=job).first()
        if existing is not None:
            return existing  # a retried report after a crash: the first one stands
        if job.status not in (TrainingJob.Status.DISPATCHED, TrainingJob.Status.UPLOADED):
            raise ServiceError(f"job {job.pk} is {job.status}", code="wrong_state")
        ps = PrivacySpend.objects.create(job=job, **vals)
        over = vals["epsilon"] > study.epsilon + 1e-9
        _study_audit(study, "privacy.spent", f"node:{hospital.pk}:{hospital.name}", obj=ps, hospital_id=hospital.pk,
                     data={"round": job.round.number, **{k: vals[k] for k in vals}, "budget": study.epsilon,
                           "over_budget": over})
    return ps


def _updates_dir(rnd: Round) -> Path:
    d = Path(settings.MEDIA_ROOT) / "updates" / f"study_{rnd.study_id}" / f"round_{rnd.number}_{rnd.attempt}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _reject_update(study: Study, job: TrainingJob, hospital: Hospital, reason: str, code: str, status: int):
    with transaction.atomic():
        _study_audit(study, "update.rejected", f"node:{hospital.pk}:{hospital.name}", obj=job, hospital_id=hospital.pk,
                     data={"round": job.round.number, "attempt": job.round.attempt, "code": code, "reason": reason})
    raise ServiceError(reason, code=code, status=status)


def update_accept(*, job: TrainingJob, hospital: Hospital, stream: BinaryIO, content_length: int | None) -> EncryptedUpdate:
    """Stream an encrypted update to storage, check it cheaply, and record it.

    The request path checks framing, part count and each part's header/parameters (cheap); the full
    deserialisation happens once, in the aggregation task.
    """
    rnd = job.round
    study = rnd.study
    if job.hospital_id != hospital.pk:
        raise ServiceError("no such job for this node", code="not_found", status=404)
    if job.status == TrainingJob.Status.UPLOADED:
        _reject_update(study, job, hospital, "an update for this job was already accepted (duplicate upload)", "duplicate", 409)
    if job.status != TrainingJob.Status.DISPATCHED or rnd.status != Round.Status.COLLECTING:
        _reject_update(study, job, hospital, f"job {job.pk} is {job.status} and round {rnd.number} is {rnd.status}: "
                       "it no longer accepts updates", "job_closed", 409)
    if content_length is None:
        _reject_update(study, job, hospital, "send the update with a Content-Length header", "length_required", 411)
    if content_length > settings.MAX_UPDATE_BYTES:
        _reject_update(study, job, hospital, f"update is {content_length} bytes; the limit is {settings.MAX_UPDATE_BYTES}",
                       "too_large", 413)
    ctx_row = HEContext.objects.filter(study=study).first()
    codec = get_codec(study.encryption["codec"])
    expected_parts = codec.n_parts(study.encryption, study.n_params)
    ctx = codec.load_params(bytes(ctx_row.public_params))
    d = _updates_dir(rnd)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".job_{job.pk}_", suffix=".part")
    sha = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            remaining = content_length
            while remaining > 0:
                chunk = stream.read(min(1 << 20, remaining))
                if not chunk:
                    break
                out.write(chunk)
                sha.update(chunk)
                size += len(chunk)
                remaining -= len(chunk)
        if size != content_length:
            raise CodecError(f"upload truncated: received {size} of {content_length} bytes")
        chunk_parts = max(1, int(settings.AGGREGATE_CHUNK_PARTS))
        chunks: list[list] = []
        with open(tmp, "rb") as fh:
            n = wire.read_frame_header(fh)
            if n != expected_parts:
                raise CodecError(f"update has {n} ciphertext parts; this study's model ({study.n_params} parameters) "
                                 f"needs exactly {expected_parts}")
            offset = fh.tell()
            for i, part in enumerate(wire.iter_frame_parts(fh, n)):
                try:
                    codec.inspect_part(ctx, part)
                except CodecError as exc:
                    raise CodecError(f"part {i}: {exc}") from None
                # Index chunks of parts (byte range + hash) so several workers can each add one range.
                if i % chunk_parts == 0:
                    chunks.append([i, 0, offset, 0, hashlib.sha256()])
                framed = wire.frame_part_header(len(part))
                chunks[-1][1] += 1
                chunks[-1][3] += len(framed) + len(part)
                chunks[-1][4].update(framed)
                chunks[-1][4].update(part)
                offset += len(framed) + len(part)
        chunks = [[a, b, c, d, h.hexdigest()] for a, b, c, d, h in chunks]
    except CodecError as exc:
        os.unlink(tmp)
        _reject_update(study, job, hospital, f"encrypted update rejected: {exc}", "invalid_ciphertext", 422)
    except BaseException:
        os.unlink(tmp)
        raise
    final = d / f"job_{job.pk}.bin"
    with transaction.atomic():
        claimed = TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.DISPATCHED,
                                             round__status=Round.Status.COLLECTING).update(
            status=TrainingJob.Status.UPLOADED, finished_at=timezone.now())
        if not claimed:
            os.unlink(tmp)
            raise ServiceError("this job no longer accepts an update (duplicate or closed)", code="duplicate", status=409)
        os.replace(tmp, final)
        upd = EncryptedUpdate.objects.create(job=job, path=str(final.relative_to(settings.MEDIA_ROOT)),
                                             n_parts=expected_parts, size_bytes=size, sha256=sha.hexdigest(),
                                             chunks=chunks if len(chunks) > 1 else [])
        Round.objects.filter(pk=rnd.pk).update(n_updates=F("n_updates") + 1)
        _study_audit(study, "update.accepted", f"node:{hospital.pk}:{hospital.name}", obj=upd, hospital_id=hospital.pk,
                     data={"round": rnd.number, "attempt": rnd.attempt, "bytes": size, "sha256": upd.sha256,
                           "parts": expected_parts})
        transaction.on_commit(lambda: _close_if_answered(rnd.pk))
    return upd


def _close_if_answered(round_id: int) -> None:
    """After an upload committed: enqueue the close only when no job of the round is still waiting.
    One close task per round instead of one per upload (with 200 hospitals the queue of closes was
    the round's critical path). Runs after this upload's commit, so the last upload to commit sees
    no pending job; a deadline or a refusal closes the round through their own paths."""
    if not TrainingJob.objects.filter(round_id=round_id, status=TrainingJob.Status.DISPATCHED).exists():
        _tasks().close_round.delay(round_id)


# Aggregations at most this many ciphertext part loads (uploads x parts) run in the task that
# closed the round (one broker hop less per round); bigger ones get their own task(s).
INLINE_AGGREGATE_MAX_PART_LOADS = int(os.environ.get("FEDPLATFORM_INLINE_AGGREGATE_MAX", "64"))


def round_try_close(*, round_id: int, force_deadline: bool = False, inline_aggregate: bool = False) -> bool:
    """Close a collecting round when every job is answered or the deadline passed; then aggregate
    (quorum met) or fail the attempt. Idempotent. With ``inline_aggregate`` (the caller is a
    Celery task) a small aggregation is not enqueued: True tells the caller to run
    round_aggregate itself right after (the reconciler covers a worker lost in between)."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().select_related("study").get(pk=round_id)
        if rnd.status != Round.Status.COLLECTING:
            return
        study = rnd.study
        jobs = list(TrainingJob.objects.filter(round=rnd))
        pending = [j for j in jobs if j.status == TrainingJob.Status.DISPATCHED]
        now = timezone.now()
        past_deadline = rnd.deadline is not None and now >= rnd.deadline
        if pending and not past_deadline and not force_deadline:
            return False
        if pending:
            TrainingJob.objects.filter(pk__in=[j.pk for j in pending]).update(
                status=TrainingJob.Status.EXPIRED, reason="no update before the round deadline", finished_at=now)
        uploaded = [j for j in jobs if j.status == TrainingJob.Status.UPLOADED]
        rnd.closed_at = now
        if len(uploaded) >= study.quorum:
            rnd.status = Round.Status.AGGREGATING
            rnd.save(update_fields=["status", "closed_at"])
            _study_audit(study, "round.closed", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "updates": len(uploaded),
                               "expired": [j.hospital_id for j in pending],
                               "refused": [j.hospital_id for j in jobs if j.status == TrainingJob.Status.REFUSED]})
            codec = get_codec(study.encryption["codec"])
            loads = len(uploaded) * codec.n_parts(study.encryption, study.n_params)
            layout = _chunk_layout(rnd)
            if layout:
                for index in range(len(layout)):
                    _on_commit(_tasks().aggregate_chunk, rnd.pk, index)
                return False
            if inline_aggregate and loads <= INLINE_AGGREGATE_MAX_PART_LOADS:
                return True
            _on_commit(_tasks().aggregate_round, rnd.pk)
        else:
            rnd.status = Round.Status.FAILED
            rnd.status_reason = (f"{len(uploaded)} update(s) arrived, the quorum is {study.quorum}"
                                 + (" (deadline passed)" if pending else ""))
            rnd.save(update_fields=["status", "status_reason", "closed_at"])
            _study_audit(study, "round.failed", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "reason": rnd.status_reason})
            _on_commit(_tasks().advance_study, study.pk)
    return False


def round_aggregate(*, round_id: int) -> Aggregate | None:
    """Add the round's ciphertexts (the platform never decrypts) and store the encrypted aggregate."""
    rnd = Round.objects.select_related("study").get(pk=round_id)
    if rnd.status != Round.Status.AGGREGATING or Aggregate.objects.filter(round=rnd).exists():
        return None
    study = rnd.study
    ctx_row = HEContext.objects.get(study=study)
    codec = get_codec(study.encryption["codec"])
    ctx = codec.load_params(bytes(ctx_row.public_params))
    updates = list(EncryptedUpdate.objects.filter(job__round=rnd).select_related("job").order_by("job__hospital_id"))
    root = Path(settings.MEDIA_ROOT)

    def read_upload(u: EncryptedUpdate) -> list[bytes]:
        try:
            data = (root / u.path).read_bytes()
        except OSError as exc:
            raise CodecError(f"stored upload of job {u.job_id} cannot be read: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != u.sha256:
            raise CodecError(f"stored upload of job {u.job_id} changed on disk since it was accepted (sha256 differs)")
        return wire.unpack_parts(data)

    t0 = time.perf_counter()
    good = updates
    try:  # fast path: one streaming pass that fully deserialises (verifies) and adds every ciphertext
        parts = codec.aggregate(ctx, (read_upload(u) for u in updates), max_uploads=study.encryption.get("max_hospitals"))
    except CodecError:
        # Find the offending upload(s), record why, and aggregate the rest if the quorum still holds.
        bad: list[tuple[EncryptedUpdate, str]] = []
        good = []
        for u in updates:
            try:
                codec.aggregate(ctx, [read_upload(u)])
                good.append(u)
            except CodecError as exc:
                bad.append((u, str(exc)))
        with transaction.atomic():
            for u, why in bad:
                TrainingJob.objects.filter(pk=u.job_id).update(status=TrainingJob.Status.REFUSED,
                                                               reason_code="invalid_ciphertext",
                                                               reason=f"rejected at aggregation: {why}")
                _study_audit(study, "update.rejected", "system", obj=u.job, hospital_id=u.job.hospital_id,
                             data={"round": rnd.number, "code": "invalid_ciphertext", "reason": why,
                                   "stage": "aggregation"})
        if len(good) < study.quorum:
            with transaction.atomic():
                Round.objects.filter(pk=rnd.pk).update(status=Round.Status.FAILED,
                                                       status_reason="too few valid updates after full verification")
                _study_audit(study, "round.failed", "system", obj=rnd,
                             data={"round": rnd.number, "reason": "too few valid updates after full verification"})
                _on_commit(_tasks().advance_study, study.pk)
            return None
        parts = codec.aggregate(ctx, (read_upload(u) for u in good), max_uploads=study.encryption.get("max_hospitals"))
    seconds = time.perf_counter() - t0
    return _store_aggregate(rnd, parts, [u.job.hospital_id for u in good], seconds)


def _store_aggregate(rnd: Round, parts: list[bytes], contributors: list[int], seconds: float) -> Aggregate | None:
    """Write the encrypted aggregate, mark the round done and open the next one, in one transaction."""
    study = rnd.study
    root = Path(settings.MEDIA_ROOT)
    frame = wire.pack_parts(parts)
    d = Path(settings.MEDIA_ROOT) / "aggregates" / f"study_{study.pk}"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"round_{rnd.number}_{rnd.attempt}.bin"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(frame)
    os.replace(tmp, path)
    with transaction.atomic():
        if not Round.objects.filter(pk=rnd.pk, status=Round.Status.AGGREGATING).update(
                status=Round.Status.DONE, done_at=timezone.now()):
            return None
        agg = Aggregate.objects.create(round=rnd, path=str(path.relative_to(root)), n_parts=len(parts),
                                       size_bytes=len(frame), sha256=hashlib.sha256(frame).hexdigest(),
                                       n_contributors=len(contributors), contributors=contributors, seconds=seconds)
        _study_audit(study, "round.aggregated", "system", obj=agg,
                     data={"round": rnd.number, "attempt": rnd.attempt, "contributors": contributors,
                           "bytes": len(frame), "sha256": agg.sha256, "seconds": round(seconds, 4)})
        _advance_in_transaction(study)
    return agg


def _chunk_layout(rnd: Round) -> list[list] | None:
    """The chunk layout shared by every upload of the round, [[first part, parts], ...], or None
    (aggregate in one task). Only the part ranges must agree: each upload's byte ranges are its
    own (a zstd-compressed ciphertext has its own size), read from its own index."""
    layouts = {json.dumps([c[:2] for c in u.chunks]) for u in EncryptedUpdate.objects.filter(job__round=rnd)}
    if len(layouts) != 1:
        return None
    layout = json.loads(layouts.pop())
    return layout if len(layout) > 1 else None


def missing_chunks(*, round_id: int) -> list[int]:
    """Chunk indexes of a chunked aggregation that have no stored result yet ([] if not chunked)."""
    layout = _chunk_layout(Round.objects.get(pk=round_id))
    if not layout:
        return []
    have = set(AggregateChunk.objects.filter(round_id=round_id).values_list("index", flat=True))
    return [i for i in range(len(layout)) if i not in have]


def round_aggregate_chunk(*, round_id: int, index: int) -> Aggregate | None:
    """Add one range of ciphertext parts over the round's uploads (one Celery task per range, so
    several workers share a large model); the chunk that completes the set assembles the
    aggregate. Any problem falls back to round_aggregate, which finds and records bad uploads."""
    rnd = Round.objects.select_related("study").get(pk=round_id)
    if rnd.status != Round.Status.AGGREGATING or Aggregate.objects.filter(round=rnd).exists():
        return None
    study = rnd.study
    layout = _chunk_layout(rnd)
    if not layout or not 0 <= index < len(layout):
        return round_aggregate(round_id=round_id)
    if not AggregateChunk.objects.filter(round=rnd, index=index).exists():
        codec = get_codec(study.encryption["codec"])
        ctx = codec.load_params(bytes(HEContext.objects.get(study=study).public_params))
        updates = list(EncryptedUpdate.objects.filter(job__round=rnd).order_by("job__hospital_id"))
        root = Path(settings.MEDIA_ROOT)

        def read_range(u: EncryptedUpdate) -> list[bytes]:
            _, n, offset, length, digest = u.chunks[index]
            try:
                with open(root / u.path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(length)
            except OSError as exc:
                raise CodecError(f"stored upload of job {u.job_id} cannot be read: {exc.strerror}") from None
            if len(data) != length or hashlib.sha256(data).hexdigest() != digest:
                raise CodecError(f"stored upload of job {u.job_id} changed on disk since it was accepted")
            return wire.unpack_bare_parts(data, n)

        t0 = time.perf_counter()
        try:
            parts = codec.aggregate(ctx, (read_range(u) for u in updates), max_uploads=study.encryption.get("max_hospitals"))
        except CodecError as exc:
            log.warning("round %s chunk %s: %s; aggregating the round in one task", rnd.pk, index, exc)
            return round_aggregate(round_id=round_id)
        seconds = time.perf_counter() - t0
        d = Path(settings.MEDIA_ROOT) / "aggregates" / f"study_{study.pk}" / f"round_{rnd.number}_{rnd.attempt}_chunks"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"chunk_{index}.bin"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(wire.pack_parts(parts))
        os.replace(tmp, path)
        try:
            with transaction.atomic():
                AggregateChunk.objects.create(round=rnd, index=index, path=str(path.relative_to(root)),
                                              n_parts=len(parts), seconds=seconds)
        except IntegrityError:
            pass  # a redelivered task already stored this chunk (same content)
    done = list(AggregateChunk.objects.filter(round=rnd).order_by("index"))
    if [c.index for c in done] != list(range(len(layout))):
        return None
    parts = []
    for c in done:
        parts.extend(wire.unpack_parts((Path(settings.MEDIA_ROOT) / c.path).read_bytes()))
    contributors = list(EncryptedUpdate.objects.filter(job__round=rnd).order_by("job__hospital_id")
                        .values_list("job__hospital_id", flat=True))
    return _store_aggregate(rnd, parts, contributors, sum(c.seconds for c in done))


def _advance_in_transaction(study: Study) -> None:
    """Open the next round (or complete the study) in the transaction that finished this one, so
    a node sees the aggregate and its next job together; on any error fall back to the task."""
    try:
        with transaction.atomic():
            study_advance(study_id=study.pk)
    except Exception:  # noqa: BLE001 - the savepoint is rolled back; the task retries it cleanly
        log.exception("advancing study %s inline failed; enqueueing it", study.pk)
        _on_commit(_tasks().advance_study, study.pk)


def round_report_record(*, rnd: Round, hospital: Hospital, metrics: dict, n_test: int, model_sha256: str,
                        epsilon_spent: float | None) -> RoundReport:
    study = rnd.study
    if rnd.status != Round.Status.DONE:
        raise ServiceError(f"round {rnd.number} has no aggregate yet", code="not_ready")
    if not isinstance(model_sha256, str) or len(model_sha256) != 64 or any(c not in "0123456789abcdef" for c in model_sha256):
        raise ServiceError("model_sha256 must be 64 lowercase hex characters", code="invalid", status=422)
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for k, v in metrics.items()):
        raise ServiceError("metrics must be an object of name -> number", code="invalid", status=422)
    with transaction.atomic():
        existing = RoundReport.objects.filter(round=rnd, hospital=hospital).first()
        if existing is not None:
            return existing
        rep = RoundReport.objects.create(round=rnd, hospital=hospital, metrics=metrics, n_test=max(0, int(n_test)),
                                         model_sha256=model_sha256, epsilon_spent=epsilon_spent)
        _study_audit(study, "model.attested", f"node:{hospital.pk}:{hospital.name}", obj=rep, hospital_id=hospital.pk,
                     data={"round": rnd.number, "model_sha256": model_sha256, "metrics": metrics,
                           "epsilon_spent": epsilon_spent})
        others = set(RoundReport.objects.filter(round=rnd).exclude(pk=rep.pk).values_list("model_sha256", flat=True))
        if others and others != {model_sha256}:
            _study_audit(study, "model.attestation_mismatch", "system", obj=rnd, hospital_id=hospital.pk,
                         data={"round": rnd.number, "hashes": sorted(others | {model_sha256})})
    return rep


def final_model_store(*, study: Study, hospital: Hospital, data: bytes) -> FinalModel:
    if study.custodian_id != hospital.pk:
        raise ServiceError("only the study's key custodian uploads the released model", code="not_custodian", status=403)
    last = Round.objects.filter(study=study, status=Round.Status.DONE).order_by("-number", "-attempt").first()
    if study.status != Study.Status.COMPLETED or last is None:
        raise ServiceError("the final model can be released only after the study completed", code="not_ready")
    sha = hashlib.sha256(data).hexdigest()
    attested = set(RoundReport.objects.filter(round=last).values_list("model_sha256", flat=True))
    if sha not in attested or len(attested) > 1:
        _audit_refusal(study, "model.release_refused", hospital,
                       "hashes attested differently by hospitals" if len(attested) > 1 else "hash not attested",
                       sha256=sha, attested=sorted(attested), round=last.number)
    if sha not in attested:
        raise ServiceError("this model's SHA-256 was not attested by any hospital for the final round; "
                           "report the final round first", code="unattested", status=422)
    if len(attested) > 1:
        raise ServiceError("hospitals attested different final models; the release is blocked until resolved",
                           code="attestation_mismatch")
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    try:
        st_load(data)
    except (SafetensorError, Exception):
        raise ServiceError("the final model must be a safetensors file", code="invalid_model", status=422) from None
    with transaction.atomic():
        existing = FinalModel.objects.filter(study=study).first()
        if existing is not None:
            if existing.sha256 == sha:
                return existing
            raise ServiceError("a different final model was already released", code="already_released")
        d = Path(settings.MEDIA_ROOT) / "models"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"study_{study.pk}_final.safetensors"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        fm = FinalModel.objects.create(study=study, path=str(path.relative_to(settings.MEDIA_ROOT)), sha256=sha,
                                       size_bytes=len(data), uploaded_by=hospital, round_number=last.number)
        _study_audit(study, "model.released", f"node:{hospital.pk}:{hospital.name}", obj=fm, hospital_id=hospital.pk,
                     data={"sha256": sha, "bytes": len(data), "round": last.number})
    return fm


def final_model_downloaded(*, study: Study, actor: str) -> None:
    with transaction.atomic():
        _study_audit(study, "model.downloaded", actor, data={"sha256": study.final_model.sha256})
