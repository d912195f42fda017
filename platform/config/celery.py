"""Celery app: the platform's work engine (round orchestration, aggregation, timeouts)."""

import logging
import os
from pathlib import Path

from celery import Celery
from celery.signals import after_task_publish, worker_ready
from django.conf import settings

from studies.outage import BeatOutageFilter, broker_state

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("fedplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# A broker outage is logged once when it starts and once when it ends (studies/outage.py).
logging.getLogger("celery.beat").addFilter(BeatOutageFilter())


@after_task_publish.connect
def _broker_reachable(**_kwargs) -> None:
    broker_state.up()


@worker_ready.connect
def _write_ready_file(**_kwargs) -> None:
    """FEDPLATFORM_WORKER_READY_FILE (settings.WORKER_READY_FILE), if set, is written once the worker
    consumes tasks (used by the local stack and container health checks to wait for a worker that
    is really up)."""
    path = settings.WORKER_READY_FILE
    if path:
        Path(path).write_text(f"{os.getpid()}\n")


def warm_publisher() -> None:
    """Open the broker connection and declare the task queue now, not in the first request that
    enqueues a task (which would pay for it inside, e.g., a node's key acknowledgement).
    Best effort: a broker that is down is reported by the first real publish."""
    try:
        with app.producer_or_acquire() as producer:
            app.amqp.queues[app.conf.task_default_queue](producer.channel).declare()
    except Exception as exc:  # noqa: BLE001 - warming only
        broker_state.down("could not pre-open the broker connection", exc)
