"""The secure-aggregation exchange of a distributed-DP round (docs/PROTOCOL.md, "Distributed DP").

The platform is the relay of fedproto.secagg.RoundCoordinator, whose state lives in the round's
SecAggRound row and is rebuilt, and so re-checked, on every stage request:

  setup      the RoundSetup and every participant's node public key (the shares are sealed to them)
  advert     a node's fresh mask public key and self-mask commitment; U0 is fixed (the key
             directory) once every hospital still in the round advertised, or after
             SECAGG_STAGE_S with at least the quorum
  shares     a node's bundle of sealed Shamir shares, one per peer of U0; U1 is fixed once every
             hospital of U0 still in the round sent its bundle, or after SECAGG_STAGE_S with the
             quorum; the jobs of hospitals outside U1 are expired (their uploads could not be unmasked)
  inbox      the shares sealed to the caller, and U1
  upload     the existing masked, encrypted upload (jobs/<id>/update), accepted only from U1
  unmask     U2 (who uploaded) is fixed when the round closes; each survivor sends shares of the
             dropped hospitals' mask keys and of the survivors' self-mask seeds; from the first
             threshold consistent answers the platform computes the correction vector (mod t)
             and only then aggregates; key holders decrypt the aggregate and add the correction.
             If no correction exists SECAGG_STAGE_S after U2 was fixed (fewer than threshold
             survivors answered, or a wrong share among the answers), the reconciler fails the
             attempt (``unmask_fail_stalled``); the study retries the round or fails as after
             any failed attempt.

The platform sees mask public keys, commitments, sealed boxes it cannot open, survivor sets and
the unmask shares the protocol reveals to it; never a surviving pair's seed, never an update.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import actor_label
from consortia.models import Hospital
from fedproto import ddp_config
from fedproto.errors import SpecError
from fedproto.secagg import (
    KeyAdvert,
    RoundCoordinator,
    RoundSetup,
    SecAggError,
    ShareBundle,
    UnmaskResponse,
)

from ..models import Round, SecAggRound, Study, TrainingJob
from . import storage
from .common import ADVANCE_STUDY, AGGREGATE_ROUND, CLOSE_ROUND, _audit_refusal, _study_audit, enqueue_on_commit
from .errors import ServiceError

GONE = (TrainingJob.Status.REFUSED, TrainingJob.Status.EXPIRED)


def is_distributed(study: Study) -> bool:
    return study.privacy_mode == "distributed"


def secagg_create(rnd: Round, hospital_ids: list[int]) -> SecAggRound | None:
    """At round open (inside its transaction): the round's RoundSetup. A setup the round cannot
    have (too few participants for the threshold) fails the round with the reason."""
    from ..selectors import study_definition

    study = rnd.study
    try:
        setup = ddp_config.round_setup(study_definition(study), rnd.pk, tuple(sorted(hospital_ids)))
    except SpecError as exc:
        Round.objects.filter(pk=rnd.pk).update(status=Round.Status.FAILED, status_reason=str(exc)[:4000],
                                               closed_at=timezone.now())
        TrainingJob.objects.filter(round=rnd).update(status=TrainingJob.Status.EXPIRED, reason=str(exc)[:4000],
                                                     finished_at=timezone.now())
        _study_audit(study, "round.failed", "system", obj=rnd, data={"round": rnd.number, "reason": str(exc)})
        return None
    sa = SecAggRound.objects.create(round=rnd, setup=setup.to_dict())
    _study_audit(study, "secagg.setup", "system", obj=rnd,
                 data={"round": rnd.number, "attempt": rnd.attempt, "participants": list(setup.participants),
                       "threshold": setup.threshold, "quorum": setup.quorum, "collusion": setup.collusion,
                       "vector_len": setup.vector_len})
    return sa


# ---------------------------------------------------------------- state

def _coordinator(sa: SecAggRound) -> RoundCoordinator:
    """The coordinator of the stored state, rebuilt through its own checks (stored rows are the
    accepted messages only, in order of the stages)."""
    c = RoundCoordinator(RoundSetup.from_dict(sa.setup))
    for a in sorted(sa.adverts.values(), key=lambda d: d["hospital"]):
        c.add_advert(KeyAdvert.from_dict(a))
    if sa.u0 is None:
        return c
    c.directory()
    for b in sorted(sa.bundles.values(), key=lambda d: d["sender"]):
        c.add_bundle(ShareBundle.from_dict(b))
    if sa.u1 is None:
        return c
    c.inbox(sa.u1[0])
    for h in sa.u2 or ():
        c.add_upload(h)
    if sa.u2 is None:
        return c
    c.unmask_request()
    for r in sorted(sa.responses.values(), key=lambda d: d["sender"]):
        c.add_unmask_response(UnmaskResponse.from_dict(r))
    return c


def _round(study: Study, number: int, *, lock: bool = False) -> tuple[Round, SecAggRound]:
    if not is_distributed(study):
        raise ServiceError(f"study {study.name!r} runs in local-DP mode: it has no secure-aggregation exchange",
                           code="not_distributed", status=409)
    rounds = Round.objects.filter(study=study, number=number).order_by("-attempt")
    rnd = rounds.first()
    if rnd is None:
        raise ServiceError(f"round {number} of study {study.name!r} has not opened", code="not_found", status=404)
    qs = SecAggRound.objects.select_for_update() if lock else SecAggRound.objects
    sa = qs.filter(round=rnd).first()
    if sa is None:
        raise ServiceError(f"round {number} has no secure-aggregation exchange", code="not_found", status=404)
    return rnd, sa


def _participant(sa: SecAggRound, hospital: Hospital) -> None:
    if hospital.pk not in sa.setup["participants"]:
        raise ServiceError("this hospital is not a participant of this round's secure aggregation", code="forbidden",
                           status=403)


def _still_in(rnd: Round) -> set[int]:
    return set(TrainingJob.objects.filter(round=rnd).exclude(status__in=GONE).values_list("hospital_id", flat=True))


def _stage_over(since) -> bool:
    return since is not None and timezone.now() >= since + timedelta(seconds=settings.SECAGG_STAGE_S)


def _refuse(study: Study, hospital: Hospital, rnd: Round, stage: str, exc: Exception, code: str = "secagg_refused",
            status: int = 422):
    """A stage message refused: an audit event of its own, then the protocol's JSON error."""
    _audit_refusal(study, "secagg.refused", hospital, str(exc), code=code, stage=stage, round=rnd.number,
                   attempt=rnd.attempt)
    raise ServiceError(str(exc), code=code, status=status)


def _not_ready(what: str) -> ServiceError:
    return ServiceError(f"{what}: try again shortly", code="not_ready", status=409)


def _context(rnd: Round, sa: SecAggRound) -> dict:
    return {"round": rnd.number, "attempt": rnd.attempt, "round_index": sa.setup["round"]}


# ---------------------------------------------------------------- stages

def setup_fetch(*, study: Study, hospital: Hospital, number: int) -> dict:
    rnd, sa = _round(study, number)
    _participant(sa, hospital)
    keys = dict(Hospital.objects.filter(pk__in=sa.setup["participants"]).values_list("pk", "public_key"))
    return {**_context(rnd, sa), "setup": sa.setup, "node_keys": {str(k): v for k, v in sorted(keys.items())}}


def advert_record(*, study: Study, hospital: Hospital, number: int, advert: dict) -> dict:
    err = None
    with transaction.atomic():
        rnd, sa = _round(study, number, lock=True)
        _participant(sa, hospital)
        try:
            a = KeyAdvert.from_dict(advert)
            if a.hospital != hospital.pk:
                raise SecAggError(f"the advert names hospital {a.hospital}; this node is hospital {hospital.pk}")
            _coordinator(sa).add_advert(a)
        except SecAggError as exc:
            err = exc
        else:
            _advert_store(study, hospital, rnd, sa, a)
    if err is not None:  # audited in a transaction of its own, after the stage's
        closed = sa.u0 is not None
        _refuse(study, hospital, rnd, "advert", err, "stage_closed" if closed else "secagg_refused", 409 if closed else 422)
    return {**_context(rnd, sa), "accepted": True}


def _advert_store(study: Study, hospital: Hospital, rnd: Round, sa: SecAggRound, a: KeyAdvert) -> None:
    if str(hospital.pk) not in sa.adverts:
        sa.adverts[str(hospital.pk)] = a.to_dict()
        sa.save(update_fields=["adverts"])
        _study_audit(study, "secagg.advert", actor_label(hospital=hospital), obj=rnd, hospital_id=hospital.pk,
                     data={"round": rnd.number, "attempt": rnd.attempt,
                           "mask_public_key_sha256": hashlib.sha256(a.mask_public_key).hexdigest(),
                           "self_mask_commitment": a.self_mask_commitment})


def directory_fetch(*, study: Study, hospital: Hospital, number: int) -> dict:
    with transaction.atomic():
        rnd, sa = _round(study, number, lock=True)
        _participant(sa, hospital)
        if sa.u0 is None:
            have = {int(h) for h in sa.adverts}
            if not (_still_in(rnd) <= have or (_stage_over(sa.created_at) and len(have) >= sa.setup["quorum"])):
                raise _not_ready(f"{len(have)} of {len(sa.setup['participants'])} hospitals advertised their mask keys")
            c = _coordinator(sa)
            try:
                d = c.directory()
            except SecAggError as exc:
                raise _not_ready(str(exc)) from None
            sa.u0, sa.u0_at = sorted(have), timezone.now()
            sa.save(update_fields=["u0", "u0_at"])
            _study_audit(study, "secagg.directory", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "u0": sa.u0})
        else:
            d = _coordinator(sa).directory()
    if hospital.pk not in sa.u0:
        raise ServiceError("this node did not advertise its mask key before the key directory was fixed: it sits this "
                           "round out", code="sat_out", status=409)
    return {**_context(rnd, sa), "directory": d.to_dict()}


def _expire_outside(rnd: Round, members: list[int], reason: str) -> list[int]:
    out = list(TrainingJob.objects.filter(round=rnd, status=TrainingJob.Status.DISPATCHED)
               .exclude(hospital_id__in=members).values_list("hospital_id", flat=True))
    if out:
        TrainingJob.objects.filter(round=rnd, hospital_id__in=out, status=TrainingJob.Status.DISPATCHED).update(
            status=TrainingJob.Status.EXPIRED, reason=reason, finished_at=timezone.now())
    return out


def shares_record(*, study: Study, hospital: Hospital, number: int, bundle: dict) -> dict:
    err = None
    with transaction.atomic():
        rnd, sa = _round(study, number, lock=True)
        _participant(sa, hospital)
        try:
            if sa.u0 is None:
                raise SecAggError("the key directory is not fixed yet: fetch it, then send the shares")
            b = ShareBundle.from_dict(bundle)
            if b.sender != hospital.pk:
                raise SecAggError(f"the bundle names sender {b.sender}; this node is hospital {hospital.pk}")
            if sa.u1 is not None:
                if sa.bundles.get(str(hospital.pk)) == b.to_dict():
                    return {**_context(rnd, sa), "accepted": True}  # a retried send of the stored bundle
                raise SecAggError("the shares stage is closed (the inboxes were sent): this node sits this round out")
            old = sa.bundles.get(str(hospital.pk))
            if old is not None and old != b.to_dict():
                raise SecAggError("this node already sent a different share bundle this round")
            _coordinator(sa).add_bundle(b)
        except SecAggError as exc:
            err = exc
        else:
            _bundle_store(study, hospital, rnd, sa, b)
    if err is not None:
        closed = sa.u1 is not None
        _refuse(study, hospital, rnd, "shares", err, "stage_closed" if closed else "secagg_refused", 409 if closed else 422)
    return {**_context(rnd, sa), "accepted": True}


def _bundle_store(study: Study, hospital: Hospital, rnd: Round, sa: SecAggRound, b: ShareBundle) -> None:
    if str(hospital.pk) not in sa.bundles:
        sa.bundles[str(hospital.pk)] = b.to_dict()
        sa.save(update_fields=["bundles"])
        _study_audit(study, "secagg.shares", actor_label(hospital=hospital), obj=rnd, hospital_id=hospital.pk,
                     data={"round": rnd.number, "attempt": rnd.attempt, "recipients": sorted(b.boxes),
                           "sha256": hashlib.sha256(repr(sorted(b.to_dict()["boxes"].items())).encode()).hexdigest()})


def inbox_fetch(*, study: Study, hospital: Hospital, number: int) -> dict:
    with transaction.atomic():
        rnd, sa = _round(study, number, lock=True)
        _participant(sa, hospital)
        if sa.u0 is None:
            raise _not_ready("the key directory is not fixed yet")
        if sa.u1 is None:
            have = {int(h) for h in sa.bundles}
            waiting = (_still_in(rnd) & set(sa.u0)) - have
            if waiting and not (_stage_over(sa.u0_at) and len(have) >= sa.setup["quorum"]):
                raise _not_ready(f"{len(have)} of {len(sa.u0)} hospitals sent their shares")
            try:
                _coordinator(sa).inbox(min(have)) if have else None
            except SecAggError as exc:
                raise _not_ready(str(exc)) from None
            if len(have) < sa.setup["quorum"]:
                raise _not_ready(f"only {len(have)} hospitals sent their shares; the quorum is {sa.setup['quorum']}")
            sa.u1, sa.u1_at = sorted(have), timezone.now()
            sa.save(update_fields=["u1", "u1_at"])
            expired = _expire_outside(rnd, sa.u1, "the node did not complete the secure-aggregation share exchange: "
                                                  "its upload could not be unmasked")
            _study_audit(study, "secagg.inboxes", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "u1": sa.u1, "expired": expired})
            if expired:
                enqueue_on_commit(CLOSE_ROUND, rnd.pk)
    if hospital.pk not in sa.u1:
        raise ServiceError("this node's shares did not reach the platform before the inboxes were sent: it sits "
                           "this round out", code="sat_out", status=409)
    box = _coordinator(sa).inbox(hospital.pk)
    return {**_context(rnd, sa), "inbox": box.to_dict()}


def check_upload(job: TrainingJob, hospital: Hospital) -> str | None:
    """Why a distributed round refuses this node's upload (None: accepted). Only hospitals of U1
    upload: another's masks could never be removed from the sum."""
    sa = SecAggRound.objects.filter(round_id=job.round_id).first()
    if sa is None:
        return "this round has no secure-aggregation exchange"
    if sa.u1 is None or hospital.pk not in sa.u1:
        return ("this node did not complete the secure-aggregation share exchange of this round (send the key advert "
                "and the shares, fetch the inbox, then upload the masked update)")
    return None


def survivors_fix(rnd: Round, uploaded_hospitals: list[int]) -> None:
    """At round close (inside its transaction): U2 = the hospitals whose upload counts. From now
    on a late upload is refused (the round no longer collects): its pairwise masks are about to be
    revealed, its self-mask never will be."""
    sa = SecAggRound.objects.select_for_update().get(round=rnd)
    sa.u2, sa.u2_at = sorted(uploaded_hospitals), timezone.now()
    sa.save(update_fields=["u2", "u2_at"])
    _study_audit(rnd.study, "secagg.survivors", "system", obj=rnd,
                 data={"round": rnd.number, "attempt": rnd.attempt, "u2": sa.u2,
                       "dropped": [h for h in (sa.u1 or []) if h not in sa.u2]})


def unmask_request_fetch(*, study: Study, hospital: Hospital, number: int) -> dict:
    rnd, sa = _round(study, number)
    _participant(sa, hospital)
    if sa.u2 is None:
        raise _not_ready("the round still collects uploads; the survivors are not fixed")
    if hospital.pk not in sa.u2:
        raise ServiceError("this node's upload is not in the aggregate (late or missing): it is treated as dropped and "
                           "cannot unmask anyone", code="not_survivor", status=403)
    req = _coordinator(sa).unmask_request()
    return {**_context(rnd, sa), "request": req.to_dict(), "unmasked": sa.unmasked_at is not None}


def unmask_record(*, study: Study, hospital: Hospital, number: int, response: dict) -> dict:
    err = None
    with transaction.atomic():
        rnd, sa = _round(study, number, lock=True)
        _participant(sa, hospital)
        try:
            if sa.u2 is None:
                raise SecAggError("no unmask request was sent yet: the round still collects uploads")
            if hospital.pk not in sa.u2:
                raise SecAggError("this node is not a survivor of this round: it cannot unmask anyone")
            resp = UnmaskResponse.from_dict(response)
            if resp.sender != hospital.pk:
                raise SecAggError(f"the response names sender {resp.sender}; this node is hospital {hospital.pk}")
            old = sa.responses.get(str(hospital.pk))
            if old is not None:
                if old == resp.to_dict():
                    return {**_context(rnd, sa), "accepted": True, "unmasked": sa.unmasked_at is not None}
                raise SecAggError("this node already sent different unmask shares this round")
            c = _coordinator(sa)
            c.add_unmask_response(resp)
        except SecAggError as exc:
            err = exc
        else:
            _unmask_store(study, hospital, rnd, sa, c, resp)
    if err is not None:
        _refuse(study, hospital, rnd, "unmask", err)
    return {**_context(rnd, sa), "accepted": True, "unmasked": sa.unmasked_at is not None}


def _unmask_store(study: Study, hospital: Hospital, rnd: Round, sa: SecAggRound, c: RoundCoordinator,
                  resp: UnmaskResponse) -> None:
    sa.responses[str(hospital.pk)] = resp.to_dict()
    fields = ["responses"]
    _study_audit(study, "secagg.unmask_shares", actor_label(hospital=hospital), obj=rnd, hospital_id=hospital.pk,
                 data={"round": rnd.number, "attempt": rnd.attempt, "dropped": sorted(resp.mask_key_shares),
                       "survivors": sorted(resp.self_mask_shares)})
    if sa.unmasked_at is None and len(sa.responses) >= sa.setup["threshold"]:
        try:
            corr = c.correction()
        except SecAggError as exc:  # a wrong share among these: wait for more survivors' answers
            _study_audit(study, "secagg.unmask_failed", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "responses": sorted(map(int, sa.responses)),
                               "reason": str(exc)})
        else:
            data = np.asarray(corr, dtype="<u8").tobytes()
            path = storage.aggregate_path(rnd).with_suffix(".correction")
            storage.atomic_write(path, data)
            sa.correction_path, sa.correction_sha256 = storage.relative(path), hashlib.sha256(data).hexdigest()
            sa.unmasked_at = timezone.now()
            fields += ["correction_path", "correction_sha256", "unmasked_at"]
            _study_audit(study, "secagg.unmasked", "system", obj=rnd,
                         data={"round": rnd.number, "attempt": rnd.attempt, "u2": sa.u2,
                               "dropped": list(c.dropped), "responses": sorted(map(int, sa.responses)),
                               "correction_sha256": sa.correction_sha256})
            enqueue_on_commit(AGGREGATE_ROUND, rnd.pk)
    sa.save(update_fields=fields)


def correction_fetch(*, study: Study, hospital: Hospital, number: int) -> SecAggRound:
    """The correction of the round's DONE attempt, for its key holders (participants)."""
    rnd = Round.objects.filter(study=study, number=number, status=Round.Status.DONE).first()
    if rnd is None:
        raise ServiceError(f"round {number} has no aggregate yet", code="not_ready", status=409)
    sa = SecAggRound.objects.filter(round=rnd).first()
    if sa is None or sa.unmasked_at is None:
        raise ServiceError(f"round {number} has no secure-aggregation correction", code="not_found", status=404)
    _participant(sa, hospital)
    return sa


def ready_to_aggregate(rnd: Round) -> bool:
    """A distributed round is aggregated only once its correction exists (the sum is useless, and
    the survivors fixed, before that); a local one always."""
    if not is_distributed(rnd.study):
        return True
    return SecAggRound.objects.filter(round=rnd, unmasked_at__isnull=False).exists()


def unmask_fail_stalled(*, round_id: int) -> bool:
    """Fail a distributed round whose unmask stage stalled: SECAGG_STAGE_S after the survivors were
    fixed there is still no correction (fewer than ``threshold`` survivors answered, or the answers
    hold a wrong share and no consistent set reconstructs). The attempt's sum can never be unmasked
    (each node answers one survivor list per round), so waiting longer cannot help: the round is
    FAILED and the study advanced, which opens the next attempt or fails the study after
    ``max_round_attempts``. Returns whether it failed the round; idempotent (called by the reconciler)."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().select_related("study").filter(pk=round_id).first()
        if rnd is None or rnd.status != Round.Status.AGGREGATING or not is_distributed(rnd.study):
            return False
        sa = SecAggRound.objects.select_for_update().filter(round=rnd).first()
        if sa is None or sa.u2 is None or sa.unmasked_at is not None or not _stage_over(sa.u2_at):
            return False
        answered, threshold = sorted(map(int, sa.responses)), int(sa.setup["threshold"])
        if len(answered) < threshold:
            reason = (f"unmask stage stalled: {len(answered)} of the {len(sa.u2)} survivors sent their shares within "
                      f"{settings.SECAGG_STAGE_S} s, the threshold is {threshold}; the sum cannot be unmasked")
        else:
            reason = (f"unmask stage stalled: {len(answered)} survivors answered (threshold {threshold}) but no "
                      f"{threshold} of them reconstruct consistently (a wrong share) within {settings.SECAGG_STAGE_S} s")
        if not Round.objects.filter(pk=rnd.pk, status=Round.Status.AGGREGATING).update(
                status=Round.Status.FAILED, status_reason=reason):
            return False
        _study_audit(rnd.study, "round.failed", "system", obj=rnd,
                     data={"round": rnd.number, "attempt": rnd.attempt, "reason": reason, "stage": "unmask",
                           "u2": sa.u2, "answered": answered, "threshold": threshold})
        enqueue_on_commit(ADVANCE_STUDY, rnd.study_id)
    return True
