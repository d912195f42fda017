"""Release: the hospitals' attestations of each round's model, the custodian's upload of the
final model (only the attested one), and its downloads."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from safetensors import safe_open

from audit.models import AuditEvent
from audit.services import actor_label
from consortia.models import Hospital
from fedproto import preprocessing
from fedproto.errors import SpecError
from fedproto.statistics import STATISTICS_ROUND

from .. import selectors
from ..models import Aggregate, FinalModel, Round, RoundReport, Study
from . import storage
from .common import _audit_refusal, _study_audit, require_approved
from .errors import ServiceError


def round_report_record(*, rnd: Round, hospital: Hospital, metrics: dict, n_test: int, model_sha256: str,
                        epsilon_spent: float | None, local_only: dict | None = None,
                        preprocessing: dict | None = None) -> RoundReport:
    """A node's evaluation of a round's model; ``local_only`` (final round only): its local-only
    baseline on the same held-out rows (studies.api.limits.local_only checked its form)."""
    study = rnd.study
    require_approved(study, hospital, "report on a round")
    if rnd.status != Round.Status.DONE:
        raise ServiceError(f"round {rnd.number} has no aggregate yet", code="not_ready")
    if local_only is not None and rnd.number < study.rounds:
        raise ServiceError(f"local_only is reported with the final round ({study.rounds}) only, not round {rnd.number}",
                           code="invalid", status=422)
    if preprocessing is not None and rnd.number != STATISTICS_ROUND:
        raise ServiceError("preprocessing is reported with the statistics round (round 0) only", code="invalid",
                           status=422)
    if rnd.number >= study.rounds and hospital.pk not in selectors.round_contributors(rnd):
        # The final round's attestations decide the release: only the hospitals whose updates
        # are in its aggregate vouch for it.
        _audit_refusal(study, "participant.refused", hospital, "only the final round's contributors attest its model",
                       code="not_contributor", request="report on the final round", round=rnd.number)
        raise ServiceError(f"only the hospitals that contributed to the final round {rnd.number} attest its model",
                           code="not_contributor", status=403)
    if not isinstance(model_sha256, str) or len(model_sha256) != 64 or any(c not in "0123456789abcdef" for c in model_sha256):
        raise ServiceError("model_sha256 must be 64 lowercase hex characters", code="invalid", status=422)
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for k, v in metrics.items()):
        raise ServiceError("metrics must be an object of name -> number", code="invalid", status=422)
    with transaction.atomic():
        existing = RoundReport.objects.filter(round=rnd, hospital=hospital, superseded_at__isnull=True).first()
        if existing is not None:
            return existing
        try:
            with transaction.atomic():  # a savepoint: an overlapping report may insert first
                rep = RoundReport.objects.create(round=rnd, hospital=hospital, metrics=metrics,
                                                 n_test=max(0, int(n_test)), model_sha256=model_sha256,
                                                 epsilon_spent=epsilon_spent, local_only=local_only,
                                                 preprocessing=preprocessing)
        except IntegrityError:
            return RoundReport.objects.get(round=rnd, hospital=hospital)  # the first one counts, as above
        _study_audit(study, "model.attested", actor_label(hospital=hospital), obj=rep, hospital_id=hospital.pk,
                     data={"round": rnd.number, "model_sha256": model_sha256, "metrics": metrics,
                           "epsilon_spent": epsilon_spent, "local_only": local_only,
                           **({"preprocessing": preprocessing} if preprocessing is not None else {})})
        others = set(RoundReport.objects.filter(round=rnd, superseded_at__isnull=True).exclude(pk=rep.pk)
                     .values_list("model_sha256", flat=True))
        if others and others != {model_sha256}:
            _study_audit(study, "model.attestation_mismatch", "system", obj=rnd, hospital_id=hospital.pk,
                         data={"round": rnd.number, "hashes": sorted(others | {model_sha256})})
    return rep


def aggregate_fetch(*, study: Study, hospital: Hospital, number: int) -> Aggregate:
    """A finished round's aggregate, for the study's approved participants only."""
    require_approved(study, hospital, "download an aggregate")
    agg = Aggregate.objects.filter(round__study=study, round__number=number, round__status=Round.Status.DONE).first()
    if agg is None:
        raise ServiceError(f"round {number} has no aggregate", code="not_found", status=404)
    return agg


def _refuse_release_once(study: Study, hospital: Hospital, reason: str, **data) -> None:
    """model.release_refused, written once per distinct situation (same model, same attestations,
    same resolution): a custodian retrying the same upload does not flood the trail."""
    data = {**data, "resolutions": study.release_resolutions}
    seen = AuditEvent.objects.filter(study_id=study.pk, action="model.release_refused", hospital_id=hospital.pk,
                                     **{f"data__{k}": v for k, v in data.items()})
    if not seen.exists():
        _audit_refusal(study, "model.release_refused", hospital, reason, **data)


def final_model_max_bytes(study: Study) -> int:
    """The largest final model a study's upload may be: float32 safetensors of its n_params
    parameters (with room for float64, buffers and the header), and never over MAX_MODEL_BYTES."""
    return min(int(settings.MAX_MODEL_BYTES), 8 * int(study.n_params or 0) + 1024 * 1024)


def final_model_store(*, study: Study, hospital: Hospital, stream: BinaryIO, content_length: int) -> FinalModel:
    """Check the caller and the study's state, then stream the model to storage (never whole in
    memory), check it is the attested safetensors file, and release it. Nothing of the body is read
    before the caller and the state are checked."""
    require_approved(study, hospital, "upload the final model")
    study = Study.objects.get(pk=study.pk)  # the release resolution as committed now
    if hospital.pk not in (study.custodian_id, selectors.final_model_releaser(study)):
        _audit_refusal(study, "model.release_refused", hospital, "not the study's key custodian", code="not_custodian")
        raise ServiceError("only the study's key custodian uploads the released model (or, while the custodian's node "
                           "is offline, the key holder the platform asks)", code="not_custodian", status=403)
    last = Round.objects.filter(study=study, status=Round.Status.DONE).order_by("-number", "-attempt").first()
    if study.status != Study.Status.COMPLETED or last is None:
        raise ServiceError("the final model can be released only after the study completed", code="not_ready")
    limit = final_model_max_bytes(study)
    if content_length > limit:
        _audit_refusal(study, "model.release_refused", hospital, "too large", code="too_large", bytes=content_length)
        raise ServiceError(f"model is {content_length} bytes; the final model of this study ({study.n_params} parameters) "
                           f"is at most {limit}", code="too_large", status=413)
    path = storage.final_model_path(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    received = storage.receive(path.parent, f".study_{study.pk}_final_", stream, content_length)
    try:
        return _release_received(study, hospital, last, received, content_length, path)
    finally:
        if received.path.exists():
            storage.discard(received)


def _release_received(study: Study, hospital: Hospital, last: Round, received: storage.Received, content_length: int,
                      path: Path) -> FinalModel:
    if received.size != content_length:
        raise ServiceError(f"model upload truncated: received {received.size} of {content_length} bytes",
                           code="truncated", status=400)
    sha = received.sha256
    attested = set(RoundReport.objects.filter(round=last, superseded_at__isnull=True).values_list("model_sha256", flat=True))
    blocked = selectors.release_block(study) is not None
    if sha not in attested or blocked:
        _refuse_release_once(study, hospital,
                             "hashes attested differently by hospitals" if blocked else "hash not attested",
                             sha256=sha, attested=sorted(attested), round=last.number)
    if sha not in attested:
        raise ServiceError("this model's SHA-256 was not attested by any hospital for the final round; "
                           "report the final round first", code="unattested", status=422)
    if blocked:
        raise ServiceError("hospitals attested different final models; the release is blocked until a consortium "
                           "admin resolves it (re-run the final evaluation, or release with the disagreement on record)",
                           code="attestation_mismatch")
    try:
        with safe_open(str(received.path), framework="numpy") as f:
            list(f.keys())
            meta = f.metadata()
    except Exception:  # noqa: BLE001 - any parse failure means: not a safetensors file
        raise ServiceError("the final model must be a safetensors file", code="invalid_model", status=422) from None
    try:
        # The released file is what `python -m hospital_node predict` reads: it must say how raw
        # rows become its inputs, for this study's schema and model.
        preprocessing.check_model_metadata(meta, study.schema, study.model_spec)
    except SpecError as exc:
        raise ServiceError(f"the final model cannot be released: {exc}", code="invalid_model", status=422) from None
    with transaction.atomic():
        # Overlapping uploads take turns (both would write the same file, then one insert would fail).
        Study.objects.select_for_update().filter(pk=study.pk).first()
        existing = FinalModel.objects.filter(study=study).first()
        if existing is not None:
            if existing.sha256 == sha:
                return existing
            raise ServiceError("a different final model was already released", code="already_released")
        storage.place(received, path)
        fm = FinalModel.objects.create(study=study, path=storage.relative(path), sha256=sha,
                                       size_bytes=received.size, uploaded_by=hospital, round_number=last.number)
        _study_audit(study, "model.released", actor_label(hospital=hospital), obj=fm, hospital_id=hospital.pk,
                     data={"sha256": sha, "bytes": received.size, "round": last.number,
                           **({"custodian_offline": study.custodian_id} if hospital.pk != study.custodian_id else {}),
                           **({"disagreement": sorted(attested), "override_by": study.release_override_by}
                              if len(attested) > 1 else {})})
    return fm


def final_model_downloaded(*, study: Study, actor: str) -> None:
    with transaction.atomic():
        _study_audit(study, "model.downloaded", actor, data={"sha256": study.final_model.sha256})


def _blocked_study(study: Study) -> tuple[Study, dict]:
    study = Study.objects.select_for_update().get(pk=study.pk)
    block = selectors.release_block(study)
    if block is None:
        raise ServiceError("the study's final-model release is not blocked: there is nothing to resolve",
                           code="not_blocked")
    return study, block


def release_rerun_evaluation(*, study: Study, actor: str) -> int:
    """Resolve a blocked release by having the final round evaluated again: its reports are
    superseded (kept, no longer counted) and every contributor evaluates it anew. Returns how
    many reports were superseded."""
    with transaction.atomic():
        study, block = _blocked_study(study)
        last = Round.objects.filter(study=study, status=Round.Status.DONE).order_by("-number", "-attempt").first()
        n = RoundReport.objects.filter(round=last, superseded_at__isnull=True).update(superseded_at=timezone.now())
        study.release_resolutions += 1
        study.save(update_fields=["release_resolutions"])
        _study_audit(study, "model.evaluation_rerun", actor, obj=last,
                     data={"round": last.number, "superseded": n, "attestations": block["attestations"]})
    return n


def release_override(*, study: Study, actor: str) -> None:
    """Resolve a blocked release by releasing anyway, with the disagreement on record: the
    custodian may then upload a model that at least one contributor attested."""
    with transaction.atomic():
        study, block = _blocked_study(study)
        study.release_resolutions += 1
        study.release_override_at = timezone.now()
        study.release_override_by = actor[:200]
        study.save(update_fields=["release_resolutions", "release_override_at", "release_override_by"])
        _study_audit(study, "model.release_override", actor,
                     data={"round": block["round"], "attestations": block["attestations"]})


def release_resolution_refused(*, study: Study, actor: str, action: str) -> None:
    """A user who may see the study but not resolve its release tried to: on record."""
    with transaction.atomic():
        _study_audit(study, "model.release_resolution_refused", actor,
                     data={"action": action, "reason": "only consortium admins resolve a blocked release"})
