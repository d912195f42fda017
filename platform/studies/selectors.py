"""Reads: study configuration as sent to nodes, the work a node has to do, progress."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from consortia.models import Hospital
from consortia.selectors import online_hospital_ids
from fedproto import PROTOCOL_VERSION
from fedproto.study import Privacy, StudyConfig, WorkKind

from .models import Aggregate, FinalModel, HEContext, Participation, Round, RoundReport, SealedKey, Study, TrainingJob

log = logging.getLogger(__name__)


def study_definition(study: Study) -> StudyConfig:
    """The stored study as the shared StudyConfig (validated when it was created: not re-checked)."""
    return StudyConfig(
        id=study.pk, name=study.name, consortium=study.consortium.name, protocol_version=PROTOCOL_VERSION,
        schema=study.schema, model=study.model_spec, rounds=study.rounds, local_epochs=study.local_epochs,
        batch_size=study.batch_size, learning_rate=study.learning_rate,
        privacy=Privacy(epsilon=study.epsilon, delta=study.delta, clip_norm=study.clip_norm,
                        accountant=study.accountant, mode=study.privacy_mode, collusion=study.collusion,
                        quant_step=study.quant_step),
        encryption=study.encryption, quorum=study.quorum, round_deadline_s=study.round_deadline_s,
        seed=study.seed, custodian_hospital_id=study.custodian_id, n_params=study.n_params,
        evaluation=study.evaluation, datasets=study.datasets)


def study_config(study: Study) -> dict:
    """The study dict sent to nodes in work items (StudyConfig.to_wire, docs/PROTOCOL.md)."""
    return study_definition(study).to_wire()


ACTIVE = [Study.Status.RECRUITING, Study.Status.RUNNING, Study.Status.PAUSED, Study.Status.COMPLETED]


def work_items_for(hospital: Hospital, skip: frozenset[str] = frozenset()) -> list[dict]:
    """Everything this node should do now, minus the item keys it asked to skip (items it cannot
    act on yet, e.g. an invitation awaiting the hospital admin). Computed from the database:
    nothing is lost if a message or a node process is."""
    return [i for i in _work_items(hospital) if i["key"] not in skip]


def _work_items(hospital: Hospital) -> list[dict]:
    items: list[dict] = []
    parts = list(Participation.objects.filter(hospital=hospital, study__status__in=ACTIVE)
                 .select_related("study", "study__consortium"))
    for p in parts:
        study = p.study
        if p.state == Participation.State.INVITED and study.status == Study.Status.RECRUITING:
            items.append({"kind": WorkKind.INVITATION, "key": f"invitation:{study.pk}", "study": study_config(study)})
            continue
        if p.state != Participation.State.APPROVED:
            continue
        custodian = study.custodian_id == hospital.pk
        has_ctx = HEContext.objects.filter(study=study).exists()
        if custodian and not has_ctx and study.status in (Study.Status.RECRUITING, Study.Status.RUNNING):
            items.append({"kind": WorkKind.PUBLISH_CONTEXT, "key": f"publish_context:{study.pk}", "study": study_config(study)})
        if custodian and has_ctx:
            need = (Participation.objects.filter(study=study, state=Participation.State.APPROVED)
                    .exclude(hospital=hospital).exclude(hospital__sealed_keys__study=study)
                    .select_related("hospital"))
            recipients = [{"hospital_id": q.hospital_id, "public_key": q.hospital.public_key} for q in need]
            if recipients:
                items.append({"kind": WorkKind.SEAL_KEYS, "key": f"seal_keys:{study.pk}", "study_id": study.pk,
                              "recipients": recipients})
        if not custodian and p.key_acked_at is None and SealedKey.objects.filter(study=study, recipient=hospital).exists():
            items.append({"kind": WorkKind.FETCH_KEY, "key": f"fetch_key:{study.pk}", "study_id": study.pk,
                          "study": study_config(study)})
        if p.key_acked_at is None:
            continue
        # Read the finished rounds before the open jobs: a round finishes and the next one opens in
        # one transaction, but these are separate queries, so read in this order a node that sees
        # round n done also sees its round n+1 job (the other order could return the evaluation
        # alone and make the node wait a poll for its job).
        reported = set(RoundReport.objects.filter(hospital=hospital, round__study=study, superseded_at__isnull=True)
                       .values_list("round_id", flat=True))
        done = list(Round.objects.filter(study=study, status=Round.Status.DONE).order_by("number"))
        # A re-run of the final evaluation (release_resolutions) renews the keys of the items it
        # brings back, so a node that set the old ones aside takes them again.
        gen = f":{study.release_resolutions}" if study.release_resolutions else ""
        for job in (TrainingJob.objects.filter(hospital=hospital, round__study=study, status=TrainingJob.Status.DISPATCHED,
                                               round__status=Round.Status.COLLECTING).select_related("round")):
            item = {"kind": WorkKind.TRAIN, "key": f"train:{job.pk}", "job_id": job.pk, "study": study_config(study),
                    "round": job.round.number, "attempt": job.round.attempt,
                    "deadline": job.round.deadline.isoformat()}
            prev = _inline_aggregate(study, job.round.number - 1)
            if prev is not None:
                item["previous_aggregate"] = prev
            items.append(item)
        for rnd in done:
            if rnd.pk in reported:
                continue
            if rnd.number >= study.rounds and hospital.pk not in round_contributors(rnd):
                continue  # the final round is attested by its contributors only
            key = f"evaluate:{study.pk}:{rnd.number}" + (gen if rnd.number >= study.rounds else "")
            items.append({"kind": WorkKind.EVALUATE, "key": key, "study_id": study.pk,
                          "study": study_config(study), "round": rnd.number})
        if (study.status == Study.Status.COMPLETED and done and done[-1].pk in reported
                and not FinalModel.objects.filter(study=study).exists() and release_block(study) is None
                and final_model_releaser(study) == hospital.pk):
            items.append({"kind": WorkKind.UPLOAD_FINAL_MODEL, "key": f"upload_final_model:{study.pk}{gen}",
                          "study_id": study.pk, "study": study_config(study), "round": done[-1].number})
    return items


def round_contributors(rnd: Round) -> set[int]:
    """The hospitals whose updates make up the round's aggregate (its recorded contributors; for a
    round without an Aggregate row, those whose upload was accepted)."""
    agg = Aggregate.objects.filter(round=rnd).only("contributors").first()
    if agg is not None:
        return set(agg.contributors)
    return set(TrainingJob.objects.filter(round=rnd, status=TrainingJob.Status.UPLOADED).values_list("hospital_id", flat=True))


def final_model_releaser(study: Study) -> int | None:
    """The hospital asked to upload a completed study's final model: its key custodian; while the
    custodian's node is offline (no contact within NODE_ONLINE_WINDOW_S), the first other key
    holder (by hospital id) whose node is online and that attested the final round, so a custodian
    gone for good does not leave the study without its model. Every such holder has the key and
    the aggregates, and the model it uploads must still have an attested SHA-256."""
    last = Round.objects.filter(study=study, status=Round.Status.DONE).order_by("-number", "-attempt").first()
    if study.custodian_id is None or last is None:
        return study.custodian_id
    if online_hospital_ids([study.custodian_id]):
        return study.custodian_id
    holders = (Participation.objects.filter(study=study, state=Participation.State.APPROVED, key_acked_at__isnull=False,
                                            hospital__round_reports__round=last,
                                            hospital__round_reports__superseded_at__isnull=True)
               .exclude(hospital_id=study.custodian_id).values_list("hospital_id", flat=True))
    online = online_hospital_ids(holders)
    return min(online) if online else study.custodian_id


def release_block(study: Study) -> dict | None:
    """Why the final model cannot be released, and by whom: the contributors of the final round
    attested different models and no consortium admin has resolved it yet. None when the release
    is not blocked (not completed, released already, attestations agree, or overridden)."""
    if study.status != Study.Status.COMPLETED or study.release_override_at is not None:
        return None
    if FinalModel.objects.filter(study=study).exists():
        return None
    last = Round.objects.filter(study=study, status=Round.Status.DONE).order_by("-number", "-attempt").first()
    if last is None:
        return None
    by_hash: dict[str, list[str]] = {}
    for rep in RoundReport.objects.filter(round=last, superseded_at__isnull=True).select_related("hospital"):
        by_hash.setdefault(rep.model_sha256, []).append(rep.hospital.name)
    if len(by_hash) < 2:
        return None
    return {"round": last.number, "code": "attestation_mismatch",
            "reason": f"the hospitals that contributed to round {last.number} attested {len(by_hash)} different models",
            "attestations": [{"model_sha256": h, "hospitals": sorted(names)} for h, names in sorted(by_hash.items())]}


def _inline_aggregate(study: Study, number: int) -> dict | None:
    """Round ``number``'s aggregate as the aggregate endpoint serves it, base64 in the train item of
    the next round, when it is small (NODE_INLINE_AGGREGATE_MAX_BYTES): the node needs it to build
    the model it trains and would otherwise fetch it right away. Ciphertext only, like the endpoint."""
    limit = settings.NODE_INLINE_AGGREGATE_MAX_BYTES
    if number < 1 or limit <= 0:
        return None
    agg = (Aggregate.objects.filter(round__study=study, round__number=number, round__status=Round.Status.DONE)
           .only("path", "size_bytes", "sha256", "n_contributors").first())
    if agg is None or agg.size_bytes > limit:
        return None
    try:
        frame = (Path(settings.MEDIA_ROOT) / agg.path).read_bytes()
    except OSError:
        log.warning("aggregate of study %s round %s is unreadable; nodes will fetch it", study.pk, number)
        return None
    return {"round": number, "contributors": agg.n_contributors, "sha256": agg.sha256,
            "frame_b64": base64.b64encode(frame).decode("ascii")}


def jobs_mark_claimed(job_ids: list[int]) -> None:
    """Record when a node first received each train item (conditional: the first delivery stands).
    Not a state change: the job stays dispatched until its update or refusal arrives."""
    if job_ids:
        TrainingJob.objects.filter(pk__in=job_ids, claimed_at__isnull=True).update(claimed_at=timezone.now())


def done_round(study: Study, number: int) -> Round | None:
    return Round.objects.filter(study=study, number=number, status=Round.Status.DONE).first()


def study_progress(study: Study) -> dict:
    done = Round.objects.filter(study=study, status=Round.Status.DONE, number__gte=1).count()  # training rounds
    current = Round.objects.filter(study=study).order_by("-number", "-attempt").first()
    return {"status": study.status, "rounds_done": done, "rounds_planned": study.rounds,
            "current_round": current.number if current else None,
            "current_round_status": current.status if current else None}


# ---------------------------------------------------------------- recruitment (services/recruitment_deadline.py)

WAITING_DECISION = "decision"
WAITING_CONTEXT = "encryption_context"
WAITING_KEY_RELAY = "key_relay"
WAITING_KEY_ACK = "key_acknowledgement"

_SENTENCES = {
    WAITING_DECISION: "has not answered the invitation",
    WAITING_CONTEXT: "is the key custodian and has not published the encryption context",
    WAITING_KEY_RELAY: "approved; waits for the key custodian to relay the study key to it",
    WAITING_KEY_ACK: "approved and has not taken the study key yet",
}


def recruitment_waiting(study: Study, parts: list[Participation] | None = None,
                        has_context: bool | None = None) -> list[dict]:
    """Whom the recruiting study waits for: one entry per hospital that holds it up, with what it
    waits for (``waiting_for``), a sentence, and when that hospital's node was last seen."""
    if parts is None:
        parts = list(Participation.objects.filter(study=study).select_related("hospital"))
    if has_context is None:
        has_context = HEContext.objects.filter(study=study).exists()
    relayed = set(SealedKey.objects.filter(study=study).values_list("recipient_id", flat=True))
    out = []
    for p in parts:
        what = None
        if p.state == Participation.State.INVITED:
            what = WAITING_DECISION
        elif p.state == Participation.State.APPROVED and p.key_acked_at is None:
            if study.custodian_id == p.hospital_id and not has_context:
                what = WAITING_CONTEXT
            elif has_context and p.hospital_id not in relayed:
                what = WAITING_KEY_RELAY
            else:
                what = WAITING_KEY_ACK
        if what is not None:
            seen = p.hospital.last_heartbeat
            out.append({"hospital_id": p.hospital_id, "hospital": p.hospital.name, "waiting_for": what,
                        "detail": f"{p.hospital.name} {_SENTENCES[what]}",
                        "node_last_seen": seen.isoformat() if seen else None})
    return out


def recruitment_status(study: Study) -> dict | None:
    """The recruiting study's deadline and whom it waits for (None once it is past recruiting)."""
    if study.status != Study.Status.RECRUITING:
        return None
    deadline = study.recruitment_deadline
    return {"deadline": deadline.isoformat() if deadline else None,
            "seconds_left": max(0, round((deadline - timezone.now()).total_seconds())) if deadline else None,
            "waiting_for": recruitment_waiting(study)}


def data_preparation(study: Study) -> dict:
    """How the study's hospitals prepare their data (docs/data.md "Federated statistics"): per
    numeric feature its scaling; with a statistics round (round 0) its status, the epsilon each
    hospital spent on it, the global constants the hospitals derived (round-0 reports) and whether
    every hospital that reported derived identical ones (equal preprocessing-document hashes)."""
    from fedproto import statistics
    from fedproto.schema import feature_scaling

    from .models import PrivacySpend

    feats = [{"name": f["name"], "scaling": feature_scaling(study.schema, f)}
             for f in study.schema.get("features", []) if f.get("type", "float") in ("float", "int")]
    out: dict = {"statistics_round": False, "features": feats}
    if not statistics.enabled(study.schema) or study.privacy_mode == "distributed":
        out["mode"] = "opted_out" if not study.schema.get("statistics", {}).get("federated", True) else "none"
        return out
    out.update(mode="federated", statistics_round=True,
               epsilon_share=statistics.epsilon_share(study.schema))
    rnd = Round.objects.filter(study=study, number=statistics.STATISTICS_ROUND).order_by("-attempt").first()
    out["round"] = ({"status": rnd.status, "attempt": rnd.attempt, "status_reason": rnd.status_reason,
                     "contributors": sorted(round_contributors(rnd)) if rnd.status == Round.Status.DONE else []}
                    if rnd else None)
    spends = (PrivacySpend.objects.filter(job__round__study=study, job__round__number=statistics.STATISTICS_ROUND)
              .select_related("job__hospital").order_by("job__hospital__name"))
    out["spend"] = [{"hospital_id": ps.job.hospital_id, "hospital": ps.job.hospital.name,
                     "epsilon_round": ps.epsilon_round, "noise_multiplier": ps.noise_multiplier,
                     "sensitivity": ps.clip_norm} for ps in spends if ps.steps > 0]
    reps = list(RoundReport.objects.filter(round__study=study, round__number=statistics.STATISTICS_ROUND,
                                           superseded_at__isnull=True).order_by("hospital_id"))
    hashes = {r.model_sha256 for r in reps}
    out["hospitals_reported"] = len(reps)
    out["identical_constants"] = bool(reps) and len(hashes) == 1
    stats = next((r.preprocessing.get("statistics") for r in reps if r.preprocessing), None)
    if stats:
        per = stats.get("features", {})
        for f in feats:
            st = per.get(f["name"], {})
            if f["scaling"] == "federated" and "mean" in st:
                f.update(center=st["mean"], scale=st["std"])
            if "missing_rate" in st:
                f["missing_rate"] = st["missing_rate"]
        out["rows"] = stats.get("n")
    return out
