"""Verifying live chains never raises a false alarm: chains are verified over and over while other
threads (each with its own PostgreSQL connection) keep appending to them.

Before the fix, verify_stream read the recorded head and the events in two queries; an event
committed in between was reported as "the chain ends at event #47 but the recorded head is #46:
events at the end were deleted" (seen once in tests/integration/test_full_study.py under load)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from audit.models import AuditEvent, AuditHead
from audit.selectors import verify_all, verify_stream
from audit.services import audit_record

STUDIES = (9001, 9002)
STREAMS = ("study:9001", "study:9002", "platform")
VERIFY_ROUNDS = 60
APPENDERS = 3
APPENDS_PER_ROUND = 6  # released to the appenders as each round of verification starts


@pytest.mark.django_db(transaction=True)
def test_verification_during_concurrent_appends_never_raises_a_false_alarm(postgres):
    stop = threading.Event()
    budget = threading.Semaphore(0)  # appends allowed: keeps the chains short and the appends concurrent
    errors: list[BaseException] = []
    appended = [0] * APPENDERS

    def append(i: int) -> None:
        try:
            k = 0
            while not stop.is_set():
                if not budget.acquire(timeout=0.5):
                    continue
                study_id = (*STUDIES, None)[(i + k) % 3]
                with transaction.atomic():
                    audit_record(action="test.append", study_id=study_id, data={"thread": i, "k": k})
                k += 1
                appended[i] = k
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=append, args=(i,), daemon=True) for i in range(APPENDERS)]
    for t in threads:
        t.start()
    alarms: list[str] = []
    try:
        for n in range(VERIFY_ROUNDS):
            for _ in range(APPENDS_PER_ROUND):
                budget.release()
            for stream in STREAMS:
                res = verify_stream(stream)
                if not res.ok:
                    alarms.append(f"{stream}: {res.problem}")
            if n % 10 == 0:
                # Inside a caller's (READ COMMITTED) transaction too, and across all streams.
                with transaction.atomic():
                    alarms += [f"{r.stream}: {r.problem}" for r in verify_all() if not r.ok]
            assert not errors, errors
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert not alarms, f"{len(alarms)} false alarm(s), first: {alarms[0]}"
    assert sum(appended) >= VERIFY_ROUNDS, f"only {sum(appended)} events were appended while verifying"
    assert all(verify_stream(s).ok for s in STREAMS)
    assert AuditEvent.objects.count() == sum(appended)


def test_a_head_behind_or_off_the_chain_is_named(light_world):
    """With head and events from one snapshot, a head that disagrees with the chain is tampering."""
    stream = f"study:{light_world['study'].pk}"
    head = AuditHead.objects.get(stream=stream)
    before = AuditEvent.objects.get(stream=stream, seq=head.seq - 1)
    AuditHead.objects.filter(stream=stream).update(seq=head.seq - 1, hash=before.hash)
    res = verify_stream(stream)
    assert not res.ok and res.broken_seq == head.seq
    assert f"the chain goes on past the recorded head #{head.seq - 1} to event #{head.seq}" in res.problem
    AuditHead.objects.filter(stream=stream).update(seq=head.seq, hash=before.hash)
    res = verify_stream(stream)
    assert not res.ok and f"the recorded head of event #{head.seq} has another hash" in res.problem
    AuditHead.objects.filter(stream=stream).update(seq=head.seq, hash=head.hash)
    assert verify_stream(stream).ok
