"""Release: the hospitals' attestations of each round's model, the custodian's upload of the
final model (only the attested one), and its downloads."""

from __future__ import annotations

import hashlib

from django.db import IntegrityError, transaction
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from audit.services import actor_label
from consortia.models import Hospital

from ..models import FinalModel, Round, RoundReport, Study
from . import storage
from .common import _audit_refusal, _study_audit
from .errors import ServiceError


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
        try:
            with transaction.atomic():  # a savepoint: an overlapping report may insert first
                rep = RoundReport.objects.create(round=rnd, hospital=hospital, metrics=metrics,
                                                 n_test=max(0, int(n_test)), model_sha256=model_sha256,
                                                 epsilon_spent=epsilon_spent)
        except IntegrityError:
            return RoundReport.objects.get(round=rnd, hospital=hospital)  # the first one counts, as above
        _study_audit(study, "model.attested", actor_label(hospital=hospital), obj=rep, hospital_id=hospital.pk,
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
    try:
        st_load(data)
    except (SafetensorError, Exception):
        raise ServiceError("the final model must be a safetensors file", code="invalid_model", status=422) from None
    with transaction.atomic():
        # Overlapping uploads take turns (both would write the same file, then one insert would fail).
        Study.objects.select_for_update().filter(pk=study.pk).first()
        existing = FinalModel.objects.filter(study=study).first()
        if existing is not None:
            if existing.sha256 == sha:
                return existing
            raise ServiceError("a different final model was already released", code="already_released")
        path = storage.final_model_path(study)
        storage.atomic_write(path, data)
        fm = FinalModel.objects.create(study=study, path=storage.relative(path), sha256=sha,
                                       size_bytes=len(data), uploaded_by=hospital, round_number=last.number)
        _study_audit(study, "model.released", actor_label(hospital=hospital), obj=fm, hospital_id=hospital.pk,
                     data={"sha256": sha, "bytes": len(data), "round": last.number})
    return fm


def final_model_downloaded(*, study: Study, actor: str) -> None:
    with transaction.atomic():
        _study_audit(study, "model.downloaded", actor, data={"sha256": study.final_model.sha256})
