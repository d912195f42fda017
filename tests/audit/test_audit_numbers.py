"""A chain verifies for every value the API accepts: event data of any JSON shape (big, tiny and
negative-zero floats, huge integers, odd unicode) goes through PostgreSQL and comes back verified,
by audit_verify and by the standalone script of docs/audit.md on an export. Values JSON cannot
carry are refused. Events written before data_canonical existed still verify."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from io import StringIO

import pytest
from audit_support import trigger_disabled
from django.core.management import call_command
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_audit_chain import run_snippet

from audit.chain import HASHED_FIELDS, AuditDataError, canonical, canonical_data
from audit.management.commands.audit_export import export_lines
from audit.models import AuditEvent, AuditHead
from audit.selectors import event_as_dict, verify_stream
from audit.services import audit_record, stream_for

# Floats PostgreSQL's jsonb respells (it keeps numbers as `numeric`): >= 1e16 come back as integers,
# -0.0 as 0.0; plus the extremes of the float range.
AWKWARD_FLOATS = [1e16, -1e16, 1.5e16, 1e20, 1e308, -1e308, 1.7976931348623157e308, -0.0, 0.0, 5e-324, 1e-7,
                  2.0 ** 53, 0.30000000000000004, 123456789.123456789]
floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(AWKWARD_FLOATS)
ints = (st.integers() | st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
        | st.sampled_from([2 ** 63, -(2 ** 63) - 1, 10 ** 16]))
# Any character but surrogates (the API's UTF-8 JSON cannot carry a lone one): controls, U+0000,
# combining marks, private use, non-characters, astral planes.
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
json_values = st.recursive(st.none() | st.booleans() | floats | ints | text,
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
                           max_leaves=24)
payloads = st.dictionaries(text, json_values, max_size=6)
_streams = itertools.count(10 ** 6)



def examples(n: int) -> settings:
    # The db fixture is one transaction per test, not per example: each example writes its own stream.
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def record(study_id: int, data: dict) -> AuditEvent:
    with transaction.atomic():
        return audit_record(action="test.payload", actor="node:1:Hôpital ☃", study_id=study_id, data=data)


@examples(150)
@given(data=payloads)
def test_any_payload_verifies_after_the_round_trip_through_postgresql(postgres, data):
    study_id = next(_streams)
    ev = record(study_id, data)
    stored = AuditEvent.objects.get(pk=ev.pk)
    # What is stored and what is read back is exactly what was hashed.
    assert stored.data_canonical == canonical_data(data)
    as_read = event_as_dict(stored)
    assert canonical_data(as_read["data"]) == canonical_data(data)
    # The spliced canonical body is the documented json.dumps of the whole event.
    assert canonical(as_read) == json.dumps({k: as_read[k] for k in HASHED_FIELDS}, sort_keys=True,
                                            separators=(",", ":"), ensure_ascii=True).encode()
    record(study_id, {"after": data})  # and the next event links to it
    res = verify_stream(stream_for(study_id))
    assert res.ok and res.n_events == 2, res.problem


@examples(12)
@given(batch=st.lists(payloads, min_size=1, max_size=6))
def test_exported_payloads_verify_with_the_documented_script(postgres, tmp_path_factory, batch):
    study_id = next(_streams)
    for data in [{"auc": 1e308, "center": 1e20, "zero": -0.0}, *batch]:
        record(study_id, data)
    out = tmp_path_factory.mktemp("export") / "chain.jsonl"
    out.write_text("".join(line + "\n" for line in export_lines(stream_for(study_id))), encoding="ascii")
    r = run_snippet(out.parent, out)
    head = AuditHead.objects.get(stream=stream_for(study_id))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"OK: {len(batch) + 1} events; head hash {head.hash}"


def test_awkward_numbers_verify_with_audit_verify_and_the_script(light_world, tmp_path, capsys):
    """The cases of the bug report: a node metric "auc": 1e308, a schema feature's center 1e20."""
    study = light_world["study"]
    with transaction.atomic():
        audit_record(action="round.report", study_id=study.pk, data={"metrics": {"auc": 1e308, "loss": -0.0}})
        audit_record(action="study.note", study_id=study.pk,
                     data={"schema": {"features": [{"name": "f0", "center": 1e20, "scale": 5e-324}]},
                           "floats": AWKWARD_FLOATS, "big": 10 ** 300, "nul": "a\x00b"})
    buf = StringIO()
    call_command("audit_verify", "--study", str(study.pk), stdout=buf)
    assert f"OK      study:{study.pk}" in buf.getvalue()
    path = tmp_path / "study.jsonl"
    call_command("audit_export", "--study", str(study.pk), "--output", str(path))
    out = capsys.readouterr().err
    assert "chain verified" in out
    lines = path.read_text(encoding="ascii").splitlines()
    assert '"metrics":{"auc":1e+308,"loss":-0.0}' in lines[-2]
    r = run_snippet(tmp_path, path)
    assert r.returncode == 0 and r.stdout.startswith(f"OK: {len(lines)} events"), r.stderr


def test_an_edit_of_the_jsonb_copy_is_caught(light_world):
    study = light_world["study"]
    with transaction.atomic():
        ev = audit_record(action="update.rejected", study_id=study.pk, data={"reason": "bad frame", "auc": 1e20})
    assert verify_stream(stream_for(study.pk)).ok
    with trigger_disabled():
        AuditEvent.objects.filter(pk=ev.pk).update(data={"reason": "", "auc": 1e20})
    res = verify_stream(stream_for(study.pk))
    assert not res.ok and res.broken_seq == ev.seq
    assert "(update.rejected) was edited: its data column no longer matches its hashed record" in res.problem


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf])
def test_non_finite_numbers_are_refused_with_a_clear_error(postgres, bad):
    with pytest.raises(AuditDataError, match=r"data\['metrics'\]\['auc'\] is .*: NaN and infinite numbers cannot "
                                             r"be written as JSON; record a finite number"):
        with transaction.atomic():
            audit_record(action="round.report", data={"metrics": {"auc": bad}})
    assert not AuditEvent.objects.filter(action="round.report").exists()


def test_an_integer_json_cannot_carry_is_refused(postgres):
    with pytest.raises(AuditDataError, match="cannot be written as JSON .*as a string"):
        with transaction.atomic():
            audit_record(action="x.y", data={"n": 10 ** 5000})


# ---------------------------------------------------------------- events written before data_canonical

def old_audit_record(*, action: str, study_id: int, data: dict) -> AuditEvent:
    """An event exactly as the code before migration 0003 wrote it: data hashed as
    json.loads(json.dumps(data)) re-serialised canonically, stored as jsonb only."""
    from django.utils import timezone

    stream = stream_for(study_id)
    with transaction.atomic():
        AuditHead.objects.get_or_create(stream=stream, defaults={"seq": 0, "hash": "0" * 64})
        head = AuditHead.objects.select_for_update().get(stream=stream)
        now = timezone.now()
        fields = {"stream": stream, "seq": head.seq + 1, "created_at": now.isoformat(timespec="microseconds"),
                  "actor": "system", "action": action, "object_type": "", "object_id": "", "consortium_id": None,
                  "study_id": study_id, "hospital_id": None,
                  "data": json.loads(json.dumps(data, sort_keys=True, default=str)), "prev_hash": head.hash}
        h = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()
        ev = AuditEvent.objects.create(**{**fields, "created_at": now, "hash": h})  # data_canonical: NULL
        AuditHead.objects.filter(stream=stream).update(seq=fields["seq"], hash=h)
    return ev


def test_events_written_before_the_migration_still_verify(postgres, tmp_path):
    study_id = next(_streams)
    old_audit_record(action="round.opened", study_id=study_id, data={"jobs": [1, 2], "note": "Hôpital"})
    # Falsely reported as edited before: jsonb printed these numbers back in another spelling.
    old_audit_record(action="round.report", study_id=study_id,
                     data={"metrics": {"auc": 1e308, "n": 10 ** 17, "zero": -0.0, "center": 1.5e16}})
    record(study_id, {"after": "the migration", "auc": 1e308})
    assert AuditEvent.objects.filter(stream=stream_for(study_id), data_canonical__isnull=True).count() == 2
    res = verify_stream(stream_for(study_id))
    assert res.ok and res.n_events == 3, res.problem
    path = tmp_path / "old.jsonl"
    path.write_text("".join(line + "\n" for line in export_lines(stream_for(study_id))), encoding="ascii")
    assert '"auc":1e+308,"center":1.5e+16,"n":100000000000000000,"zero":-0.0' in path.read_text()
    r = run_snippet(tmp_path, path)
    assert r.returncode == 0, r.stderr


def test_an_edited_old_event_is_still_caught(postgres):
    """Respelling a number only finds the same value: an edit to a neighbouring integer is not hidden."""
    study_id = next(_streams)
    ev = old_audit_record(action="round.report", study_id=study_id, data={"auc": 1e16})
    assert verify_stream(stream_for(study_id)).ok
    with trigger_disabled():
        AuditEvent.objects.filter(pk=ev.pk).update(data={"auc": 10 ** 16 + 1})
    res = verify_stream(stream_for(study_id))
    assert not res.ok and "(round.report) was edited" in res.problem


@pytest.mark.django_db(transaction=True)
def test_migration_keeps_existing_events_valid(postgres):
    """A database at migration 0002 with events in it: migrating to the current schema rewrites no
    event (the trigger stays on) and every chain still verifies."""
    call_command("migrate", "audit", "0002", verbosity=0)
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_auditevent'")
            assert "data_canonical" not in {r[0] for r in cur.fetchall()}
            prev = "0" * 64
            for seq, data in enumerate([{"a": 1}, {"auc": 1e20, "z": -0.0}, {"note": "ε ≤ 1"}], 1):
                fields = {"stream": "study:77", "seq": seq, "created_at": f"2026-01-0{seq}T00:00:00.000000+00:00",
                          "actor": "system", "action": "old.event", "object_type": "", "object_id": "",
                          "consortium_id": None, "study_id": 77, "hospital_id": None, "data": data, "prev_hash": prev}
                h = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"),
                                              ensure_ascii=True).encode()).hexdigest()
                cur.execute("INSERT INTO audit_auditevent (stream, seq, created_at, actor, action, object_type, object_id,"
                            " consortium_id, study_id, hospital_id, data, prev_hash, hash)"
                            " VALUES (%s, %s, %s, %s, %s, '', '', NULL, %s, NULL, %s::jsonb, %s, %s)",
                            [fields["stream"], seq, fields["created_at"], "system", "old.event", 77, json.dumps(data),
                             prev, h])
                prev = h
            cur.execute("INSERT INTO audit_audithead (stream, seq, hash) VALUES ('study:77', 3, %s)", [prev])
    finally:
        call_command("migrate", "audit", verbosity=0)
    assert AuditEvent.objects.filter(stream="study:77", data_canonical__isnull=True).count() == 3
    with transaction.atomic():
        audit_record(action="new.event", study_id=77, data={"auc": 1e20})
    res = verify_stream("study:77")
    assert res.ok and res.n_events == 4, res.problem
    with connection.cursor() as cur:
        cur.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_event_no_update_delete'")
        assert cur.fetchone() == ("O",)
