"""What every state change sets off besides its rows: the audit event, the wake-up of the node
long-polls it concerns, and follow-up Celery tasks.

Tasks are enqueued by their registered name (studies/tasks.py registers them; the studies app
imports that module when Django starts), so services and tasks do not import each other.
"""

from __future__ import annotations

from celery import current_app
from django.db import transaction
from kombu.exceptions import OperationalError as KombuOperationalError

from audit.services import actor_label, audit_record
from consortia.models import Hospital

from .. import worksignal
from ..models import Participation, Study
from ..outage import broker_state
from .errors import ServiceError

# Names of the Celery tasks the services enqueue (their @shared_task name in studies/tasks.py).
ADVANCE_STUDY = "studies.advance_study"
CLOSE_ROUND = "studies.close_round"
CLOSE_ROUND_AT_DEADLINE = "studies.close_round_at_deadline"
AGGREGATE_CHUNK = "studies.aggregate_chunk"
AGGREGATE_ROUND = "studies.aggregate_round"
# The reports app's: keep the study's epsilon recomputation (the audit report's) up to date.
RECOMPUTE_PRIVACY = "reports.recompute_privacy"
TASK_NAMES = (ADVANCE_STUDY, CLOSE_ROUND, CLOSE_ROUND_AT_DEADLINE, AGGREGATE_CHUNK, AGGREGATE_ROUND, RECOMPUTE_PRIVACY)


def enqueue(task_name: str, *args) -> None:
    """Send a task now. It is looked up in the current Celery app's registry, like a task's own
    .delay(), so eager mode (CELERY_TASK_ALWAYS_EAGER, the in-process tests) runs it in place.

    A broker that is down does not fail the caller: every task is a follow-up of a state change
    that is already committed, and the reconciler (run by Celery beat once the broker is back)
    repairs every study whose next step was not sent. Logged once per outage."""
    task = current_app.tasks[task_name]
    if task.app.conf.task_always_eager:
        task.delay(*args)
        return
    try:
        task.delay(*args)
    except (KombuOperationalError, OSError, *task.app.connection_for_write().connection_errors) as exc:
        broker_state.down(f"could not send {task_name} (the reconciler will repair it)", exc)
    else:
        broker_state.up()


def enqueue_on_commit(task_name: str, *args) -> None:
    """Send a task once the current transaction commits (a worker must see the committed rows)."""
    transaction.on_commit(lambda: enqueue(task_name, *args))


# Audit actions whose state change only alters the work of the hospital they name (and, for a
# decision, the custodian's key relay): they wake that node's long-poll, not every node's.
_NODE_LOCAL_ACTIONS = {"update.accepted", "update.rejected", "privacy.spent", "model.attested", "model.released",
                       "model.release_refused", "sealed_key.fetched", "sealed_key.relayed", "key.acknowledged",
                       "key.rejected", "job.refused", "he_context.published", "he_context.rejected",
                       "participation.approved", "participation.declined", "participant.refused"}


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


def _audit_refusal(study: Study, action: str, hospital: Hospital, reason: str, **data) -> None:
    """Record a refused request in its own transaction (the refusal itself changes no state)."""
    with transaction.atomic():
        _study_audit(study, action, actor_label(hospital=hospital), hospital_id=hospital.pk,
                     data={"reason": reason, **data})


def require_approved(study: Study, hospital: Hospital, request: str) -> Participation:
    """The hospital's participation when it APPROVED the study; otherwise the refusal is an audit
    event and a 403 (the hospital was invited, so the study's existence is no secret to it; a
    hospital never invited gets the views' 404 before this is reached)."""
    p = Participation.objects.filter(study=study, hospital=hospital).first()
    if p is not None and p.state == Participation.State.APPROVED:
        return p
    state = p.state if p is not None else "not invited"
    _audit_refusal(study, "participant.refused", hospital, f"{request}: only approved participants may do this",
                   code="not_approved", request=request, participation=state)
    raise ServiceError(f"only hospitals that approved study {study.name!r} may {request}; "
                       f"this hospital's participation is {state}", code="not_approved", status=403)
