"""Two overlapping reports of one round by one hospital (a node retrying while its first request is
still in flight): the second waits on the first's row and then gets it back, never a 500."""

from __future__ import annotations

import threading
import time

import pytest
from audit_support import done_round_with_jobs, light_world, postgres  # noqa: F401 - fixtures
from django.db import connection, connections, transaction

from studies import services
from studies.models import RoundReport

SHA = "ab" * 32


def _wait_until_blocked_on_a_lock(timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO \"studies_roundreport\"%%'")
            if cur.fetchone()[0]:
                return
        time.sleep(0.02)
    raise AssertionError("the second report never waited on the first one's row")


@pytest.mark.django_db(transaction=True)
def test_overlapping_reports_of_one_round_return_the_first(light_world):  # noqa: F811
    study, (a, b, _) = light_world["study"], light_world["hospitals"]
    rnd, _ = done_round_with_jobs(study, [a, b], 1)
    first_inserted, release_first = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def first():
        try:
            with transaction.atomic():
                results["first"] = services.round_report_record(rnd=rnd, hospital=a, metrics={"auc": 0.9}, n_test=10,
                                                                model_sha256=SHA, epsilon_spent=None)
                first_inserted.set()
                release_first.wait(30)
        finally:
            connections.close_all()

    def second():
        try:
            results["second"] = services.round_report_record(rnd=rnd, hospital=a, metrics={"auc": 0.8}, n_test=10,
                                                             model_sha256=SHA, epsilon_spent=None)
        except Exception as exc:  # noqa: BLE001 - reported below
            results["second"] = exc
        finally:
            connections.close_all()

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_inserted.wait(30)
    t2 = threading.Thread(target=second)
    t2.start()
    try:
        _wait_until_blocked_on_a_lock()
    finally:
        release_first.set()
        t1.join(30)
        t2.join(30)
    assert isinstance(results["second"], RoundReport), results["second"]
    assert results["second"].pk == results["first"].pk and results["second"].metrics == {"auc": 0.9}
    assert RoundReport.objects.filter(round=rnd, hospital=a).count() == 1
