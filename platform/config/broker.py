"""Broker transports.

The embedded broker: kombu's SQLAlchemy transport on a SQLite file (no server needed).

kombu's transport polls once a second by default and hands every transport option to
create_engine (so `polling_interval` cannot be passed as one); this subclass polls every 20 ms so
round orchestration stays fast on the embedded default (a poll of the idle queue table is ~0.1 ms).
"""

import logging

from kombu.transport import redis as kombu_redis
from kombu.transport import sqlalchemy as kombu_sqla

log = logging.getLogger(__name__)


class Transport(kombu_sqla.Transport):
    polling_interval = 0.02


class _RedisQoS(kombu_redis.QoS):
    """kombu's Redis QoS, minus the crash on a broker restart.

    On a lost connection the worker closes its channel, and closing re-queues the messages it holds
    unacknowledged (a task with an ETA or countdown waits there; so does an acks_late task that is
    running). With the broker down that re-queue fails inside kombu's own error handling (an
    AttributeError on the dropped connection), which Celery treats as unrecoverable: the worker
    exits. The messages are still in Redis's unacked index (restored to the queue after the
    visibility timeout by any worker) or, if Redis lost its data, gone; the reconciler repairs a
    study whose next step was lost either way. So a failed re-queue is logged and the worker
    reconnects."""

    def restore_unacked(self, client=None):
        try:
            return super().restore_unacked(client)
        except Exception as exc:  # noqa: BLE001 - any failure here would stop the worker
            log.warning("broker unreachable: %d unacknowledged message(s) left to Redis's visibility timeout and "
                        "the reconciler (%s: %s)", len(self._delivered), exc.__class__.__name__, exc)
            self._delivered.clear()
            return None


class _RedisChannel(kombu_redis.Channel):
    QoS = _RedisQoS


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport whose worker survives a broker restart (see _RedisQoS)."""

    Channel = _RedisChannel
