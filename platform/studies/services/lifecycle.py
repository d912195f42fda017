"""Study lifecycle: definition, status changes and moving a study forward.

Every state change happens in the services package, in a transaction, with its audit event;
tasks (studies/tasks.py) and API views call the services and never change state themselves.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Iterable

from django.db import transaction
from django.utils import timezone

from consortia.models import Consortium, Hospital
from fedproto.datasets import hospital_ids
from fedproto.errors import SpecError
from fedproto.study import validate_study

from ..models import HEContext, Participation, Round, Study, TrainingJob
from ..selectors import study_config
from .common import ADVANCE_STUDY, CLOSE_ROUND, RECOMPUTE_PRIVACY, _study_audit, enqueue, enqueue_on_commit
from .errors import ServiceError
from .recruitment_deadline import recruitment_close, recruitment_due
from .rounds import first_round, round_open

log = logging.getLogger(__name__)

# How long recruitment stays open (services/recruitment_deadline.py).
DEFAULT_RECRUITMENT_WINDOW_S = 7 * 24 * 3600
MIN_RECRUITMENT_WINDOW_S = 10
MAX_RECRUITMENT_WINDOW_S = 90 * 24 * 3600

TERMINAL = {Study.Status.COMPLETED, Study.Status.FAILED, Study.Status.CANCELLED}


# ---------------------------------------------------------------- study definition

def _validated_definition(*, consortium: Consortium, name: str, hospitals: list[Hospital], schema: dict,
                          model_spec: dict, rounds: int, local_epochs: int, batch_size: int, learning_rate: float,
                          privacy: dict, encryption: dict, quorum: int, round_deadline_s: int, seed: int | None,
                          evaluation: dict | None, datasets: dict | str | None):
    """A study definition checked by fedproto.study.validate_study, the one owner of a study's
    bounds (the node parses what it receives with the same rules), and its invited hospitals."""
    foreign = [h.name for h in hospitals if h.consortium_id != consortium.pk]
    if foreign:
        raise SpecError(f"hospital(s) {foreign} are not members of consortium {consortium.name}")
    if len({h.pk for h in hospitals}) != len(hospitals):
        raise SpecError("a hospital is invited twice")
    cfg = validate_study({"name": name, "consortium": consortium.name, "schema": schema, "model": model_spec,
                          "rounds": rounds, "local_epochs": local_epochs, "batch_size": batch_size,
                          "learning_rate": learning_rate, "privacy": privacy, "encryption": encryption,
                          "quorum": quorum, "round_deadline_s": round_deadline_s, "seed": seed,
                          **({} if evaluation is None else {"evaluation": evaluation}),
                          **({} if datasets is None else {"datasets": datasets})},
                         n_hospitals=len(hospitals))
    strangers = sorted(set(hospital_ids(cfg.datasets)) - {h.pk for h in hospitals})
    if strangers:
        raise SpecError(f"datasets.hospitals names hospital(s) {strangers[:10]} that the study does not invite")
    return cfg


def _definition_fields(cfg) -> dict:
    return dict(name=cfg.name, schema=cfg.schema, model_spec=cfg.model, rounds=cfg.rounds,
                local_epochs=cfg.local_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                epsilon=cfg.privacy.epsilon, delta=cfg.privacy.delta, clip_norm=cfg.privacy.clip_norm,
                accountant=cfg.privacy.accountant, privacy_mode=cfg.privacy.mode, collusion=cfg.privacy.collusion,
                quant_step=cfg.privacy.quant_step, encryption=cfg.encryption, quorum=cfg.quorum,
                round_deadline_s=cfg.round_deadline_s, seed=cfg.seed, n_params=cfg.n_params,
                evaluation=cfg.evaluation, datasets=cfg.datasets)


def _check_recruitment_window(recruitment_window_s) -> int:
    if not (isinstance(recruitment_window_s, int) and not isinstance(recruitment_window_s, bool)
            and MIN_RECRUITMENT_WINDOW_S <= recruitment_window_s <= MAX_RECRUITMENT_WINDOW_S):
        raise SpecError(f"recruitment_window_s must be a whole number of seconds from {MIN_RECRUITMENT_WINDOW_S} to "
                        f"{MAX_RECRUITMENT_WINDOW_S} (90 days), not {recruitment_window_s!r}")
    return recruitment_window_s


def _name_taken(consortium: Consortium, name: str, *, other_than: int | None = None) -> None:
    if Study.objects.filter(consortium=consortium, name=name).exclude(pk=other_than).exists():
        raise SpecError(f"a study named {name!r} already exists in this consortium; choose another name")


def study_create(*, consortium: Consortium, name: str, hospitals: Iterable[Hospital], schema: dict,
                 model_spec: dict, rounds: int, local_epochs: int, batch_size: int, learning_rate: float,
                 privacy: dict, encryption: dict, quorum: int, round_deadline_s: int, owner=None,
                 purpose: str = "", seed: int | None = None, evaluation: dict | None = None,
                 datasets: dict | str | None = None, actor: str = "system",
                 cloned_from: Study | None = None,
                 recruitment_window_s: int = DEFAULT_RECRUITMENT_WINDOW_S) -> Study:
    """Define a study (a draft); ``cloned_from``: the study whose definition it started from (in
    the audit event)."""
    hospitals = list(hospitals)
    _check_recruitment_window(recruitment_window_s)
    cfg = _validated_definition(consortium=consortium, name=name, hospitals=hospitals, schema=schema,
                                model_spec=model_spec, rounds=rounds, local_epochs=local_epochs,
                                batch_size=batch_size, learning_rate=learning_rate, privacy=privacy,
                                encryption=encryption, quorum=quorum, round_deadline_s=round_deadline_s, seed=seed,
                                evaluation=evaluation, datasets=datasets)
    with transaction.atomic():
        _name_taken(consortium, name)
        study = Study.objects.create(consortium=consortium, purpose=purpose, owner=owner,
                                     recruitment_window_s=recruitment_window_s, **_definition_fields(cfg))
        for h in hospitals:
            Participation.objects.create(study=study, hospital=h)
        extra = {} if cloned_from is None else {"cloned_from": {"id": cloned_from.pk, "name": cloned_from.name}}
        _study_audit(study, "study.created", actor, data={"config": study_config(study),
                                                          "invited": [h.name for h in hospitals],
                                                          "recruitment_window_s": recruitment_window_s, **extra})
    return study


def study_update(*, study: Study, name: str, hospitals: Iterable[Hospital], schema: dict, model_spec: dict,
                 rounds: int, local_epochs: int, batch_size: int, learning_rate: float, privacy: dict,
                 encryption: dict, quorum: int, round_deadline_s: int, purpose: str = "",
                 evaluation: dict | None = None, datasets: dict | str | None = None,
                 actor: str = "system", recruitment_window_s: int | None = None) -> Study:
    """Edit a draft's definition (same checks as study_create; its consortium, owner and seed stay):
    the invited hospitals are replaced by ``hospitals``. Audited as study.edited with the changed
    keys, the definition before and after. Anything but a draft: wrong_state (409)."""
    hospitals = list(hospitals)
    if recruitment_window_s is not None:
        _check_recruitment_window(recruitment_window_s)
    cfg = _validated_definition(consortium=study.consortium, name=name, hospitals=hospitals, schema=schema,
                                model_spec=model_spec, rounds=rounds, local_epochs=local_epochs,
                                batch_size=batch_size, learning_rate=learning_rate, privacy=privacy,
                                encryption=encryption, quorum=quorum, round_deadline_s=round_deadline_s,
                                seed=study.seed, evaluation=evaluation, datasets=datasets)
    with transaction.atomic():
        s = Study.objects.select_for_update().get(pk=study.pk)
        if s.status != Study.Status.DRAFT:
            raise ServiceError(f"study is {s.status}; only a draft can be edited (clone it into a new draft instead)",
                               code="wrong_state")
        _name_taken(s.consortium, name, other_than=s.pk)
        before = {"config": study_config(s), "purpose": s.purpose,
                  "invited": sorted(s.participations.values_list("hospital__name", flat=True))}
        for k, v in _definition_fields(cfg).items():
            setattr(s, k, v)
        s.purpose = purpose
        if recruitment_window_s is not None:
            s.recruitment_window_s = recruitment_window_s
        s.save()
        s.participations.exclude(hospital__in=hospitals).delete()
        for h in hospitals:
            Participation.objects.get_or_create(study=s, hospital=h)
        after = {"config": study_config(s), "purpose": s.purpose, "invited": sorted(h.name for h in hospitals)}
        changed = sorted({k for k in after["config"] if after["config"].get(k) != before["config"].get(k)}
                         | {k for k in ("purpose", "invited") if after[k] != before[k]})
        _study_audit(s, "study.edited", actor, data={"changed": changed, "before": before, "after": after})
    return s


def study_open_recruitment(*, study: Study, actor: str) -> Study:
    """draft -> recruiting: invitations become visible to the hospitals."""
    with transaction.atomic():
        study = Study.objects.get(pk=study.pk)
        deadline = timezone.now() + timedelta(seconds=study.recruitment_window_s)
        n = Study.objects.filter(pk=study.pk, status=Study.Status.DRAFT).update(status=Study.Status.RECRUITING,
                                                                                 recruitment_deadline=deadline)
        if not n:
            raise ServiceError(f"study is {Study.objects.get(pk=study.pk).status}, only a draft can be started",
                               code="wrong_state")
        _study_audit(study, "study.recruiting", actor, data={"recruitment_deadline": deadline.isoformat()})
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
        if to in TERMINAL:
            enqueue_on_commit(RECOMPUTE_PRIVACY, study.pk)  # the audit report's, final from now on
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
        enqueue_on_commit(ADVANCE_STUDY, study.pk)
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


LIVE = [Study.Status.RECRUITING, Study.Status.RUNNING, Study.Status.PAUSED]


def hospital_withdraw(*, hospital, actor: str, reason: str) -> list[str]:
    """Withdraw a hospital from every study not finished yet (its node was revoked). Returns a
    sentence per study (see participation_withdraw)."""
    notes: list[str] = []
    with transaction.atomic():
        parts = list(Participation.objects.select_for_update().select_related("study", "hospital")
                     .filter(hospital=hospital, study__status__in=LIVE,
                             state__in=[Participation.State.INVITED, Participation.State.APPROVED]))
        for p in parts:
            notes += _withdraw(p, actor=actor, reason=reason)
    return notes


def participation_withdraw(*, participation: Participation, actor: str, reason: str) -> list[str]:
    """A hospital withdraws its approval of one study, mid-study too: see _withdraw. The reason is
    required (it goes into the audit trail and onto the study page)."""
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError("say why the hospital withdraws (the reason is recorded in the audit trail)",
                           code="invalid", status=422)
    with transaction.atomic():
        p = Participation.objects.select_for_update().select_related("study", "hospital").get(pk=participation.pk)
        if p.study.status not in LIVE:
            raise ServiceError(f"study {p.study.name!r} is {p.study.status}; there is nothing left to withdraw from",
                               code="wrong_state")
        if p.state != Participation.State.APPROVED:
            raise ServiceError(f"this hospital's participation is {p.state}; only an approval can be withdrawn",
                               code="wrong_state")
        return _withdraw(p, actor=actor, reason=reason)


def _withdraw(p: Participation, *, actor: str, reason: str) -> list[str]:
    """Withdrawal: the participation becomes withdrawn, the hospital gets no more jobs, its open
    jobs expire (rounds stop waiting for it and close with the others' updates), and a study that
    can no longer reach its quorum (or whose key custodian left before publishing the encryption
    context) fails saying why. Audited as participation.withdrawn. Inside a transaction."""
    notes = []
    now = timezone.now()
    study, hospital = p.study, p.hospital
    was = p.state
    p.state, p.reason, p.decided_by, p.decided_at = Participation.State.WITHDRAWN, reason[:2000], actor[:200], now
    p.save(update_fields=["state", "reason", "decided_by", "decided_at"])
    jobs = TrainingJob.objects.filter(hospital=hospital, round__study=study, status=TrainingJob.Status.DISPATCHED)
    round_ids = list(jobs.values_list("round_id", flat=True))
    jobs.update(status=TrainingJob.Status.EXPIRED, reason=f"hospital withdrawn: {reason}"[:4000], finished_at=now)
    holds_key = was == Participation.State.APPROVED and (study.custodian_id == hospital.pk
                                                          or p.key_acked_at is not None)
    _study_audit(study, "participation.withdrawn", actor, obj=p, hospital_id=hospital.pk,
                 data={"hospital": hospital.name, "reason": reason, "was": was, "expired_jobs": len(round_ids),
                       "holds_study_key": holds_key, "custodian": study.custodian_id == hospital.pk})
    approved = Participation.objects.filter(study=study, state=Participation.State.APPROVED).count()
    fail = None
    if was == Participation.State.APPROVED and approved < study.quorum:
        fail = (f"{hospital.name} was withdrawn ({reason}); {approved} approved hospital(s) remain and "
                f"the quorum is {study.quorum}")
    elif study.custodian_id == hospital.pk and not HEContext.objects.filter(study=study).exists():
        fail = f"the key custodian {hospital.name} was withdrawn ({reason}) before it published the encryption context"
    if fail:
        study_fail(study=study, reason=fail, actor=actor)
        notes.append(f"Study {study.name!r} failed: {fail}.")
    else:
        for rid in round_ids:
            enqueue_on_commit(CLOSE_ROUND, rid)
        _advance_after_commit(study)
        notes.append(f"Withdrawn from study {study.name!r} ({study.status}); its rounds no longer wait for it.")
    if holds_key:
        notes.append(f"The node keeps its copy of the key of study {study.name!r} on the hospital's machine (the "
                     "platform cannot erase it); it can no longer download the study's aggregates or model. "
                     "Delete the node's state directory to destroy it.")
    return notes


def _expire_open_jobs(study: Study, *, reason: str) -> None:
    TrainingJob.objects.filter(round__study=study, status=TrainingJob.Status.DISPATCHED).update(
        status=TrainingJob.Status.EXPIRED, reason=reason, finished_at=timezone.now())
    Round.objects.filter(study=study, status__in=[Round.Status.OPEN, Round.Status.COLLECTING]).update(
        status=Round.Status.FAILED, status_reason=reason, closed_at=timezone.now())



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
            enqueue(ADVANCE_STUDY, study.pk)

    transaction.on_commit(run)


def study_advance(*, study_id: int) -> None:
    """Move a study forward if it can: start running once set up, open the next round. Idempotent."""
    study = Study.objects.get(pk=study_id)
    if study.status == Study.Status.RECRUITING:
        parts = list(Participation.objects.filter(study=study))
        answered = all(p.state != Participation.State.INVITED for p in parts)
        approved = [p for p in parts if p.state == Participation.State.APPROVED]
        if answered and len(approved) < study.quorum:
            study_fail(study=study,
                       reason=f"only {len(approved)} of {len(parts)} hospitals approved; the quorum is {study.quorum}")
            return
        ready = answered and HEContext.objects.filter(study=study).exists() and all(p.key_acked_at for p in approved)
        if not ready and recruitment_due(study, timezone.now()):
            _close_recruitment(study)
            return
        if ready:
            with transaction.atomic():
                if _set_status(study, frm=[Study.Status.RECRUITING], to=Study.Status.RUNNING, actor="system",
                               action="study.running",
                               reason=f"{len(approved)} hospitals approved and hold the key"):
                    round_open(study=study, number=first_round(study), attempt=1)
        return
    if study.status != Study.Status.RUNNING:
        return
    last = Round.objects.filter(study=study).order_by("-number", "-attempt").first()
    if last is None:
        with transaction.atomic():
            round_open(study=study, number=first_round(study), attempt=1)
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


def _close_recruitment(study: Study) -> None:
    """At the recruitment deadline: start with the hospitals that hold the key (the others
    withdrawn) or fail naming whom the study waited for (services/recruitment_deadline.py)."""
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study.pk)
        if study.status != Study.Status.RECRUITING:
            return  # a concurrent advance got here first
        parts = list(Participation.objects.select_for_update(of=("self",)).select_related("hospital")
                     .filter(study=study))
        has_context = HEContext.objects.filter(study=study).exists()
        start, reason = recruitment_close(study, parts, has_context, timezone.now())
        if not start:
            study_fail(study=study, reason=reason)
        elif _set_status(study, frm=[Study.Status.RECRUITING], to=Study.Status.RUNNING, actor="system",
                         action="study.running", reason=reason):
            round_open(study=study, number=first_round(study), attempt=1)


def _advance_in_transaction(study: Study) -> None:
    """Open the next round (or complete the study) in the transaction that finished this one, so
    a node sees the aggregate and its next job together; on any error fall back to the task."""
    try:
        with transaction.atomic():
            study_advance(study_id=study.pk)
    except Exception:  # noqa: BLE001 - the savepoint is rolled back; the task retries it cleanly
        log.exception("advancing study %s inline failed; enqueueing it", study.pk)
        enqueue_on_commit(ADVANCE_STUDY, study.pk)


