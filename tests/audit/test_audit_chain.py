"""The tamper-evident trail: the PostgreSQL trigger, audit_verify against each way of tampering, and
the export verified by the standalone procedure documented in docs/audit.md (run verbatim)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from audit_support import trigger_disabled
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent, AuditHead
from audit.selectors import verify_all, verify_study_chain

REPO = Path(__file__).resolve().parents[2]


def verify_cmd(study_id=None) -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit_verify", *(["--study", str(study_id)] if study_id else []), stdout=out)
    return out.getvalue()


def ev(study, seq) -> AuditEvent:
    return AuditEvent.objects.get(stream=f"study:{study.pk}", seq=seq)


def test_intact_chains_verify(light_world):
    study = light_world["study"]
    out = verify_cmd(study.pk)
    n = AuditEvent.objects.filter(study_id=study.pk).count()
    assert n >= 5
    head = AuditHead.objects.get(stream=f"study:{study.pk}")
    assert f"OK      study:{study.pk}: {n} events, head {head.hash}" in out
    assert all(r.ok for r in verify_all())
    assert "chain(s) verified" in verify_cmd()


def test_trigger_refuses_update_and_delete(light_world):
    e = ev(light_world["study"], 2)
    with pytest.raises(DatabaseError, match="append-only: UPDATE"):
        with transaction.atomic():
            AuditEvent.objects.filter(pk=e.pk).update(action="study.nothing_happened")
    with pytest.raises(DatabaseError, match="append-only: DELETE"):
        with transaction.atomic():
            AuditEvent.objects.filter(pk=e.pk).delete()
    with pytest.raises(DatabaseError, match="append-only: UPDATE"):
        with transaction.atomic(), connection.cursor() as cur:  # raw SQL too, not only the ORM
            cur.execute("UPDATE audit_auditevent SET data = '{}'::jsonb WHERE id = %s", [e.pk])
    assert ev(light_world["study"], 2).action == e.action and verify_study_chain(light_world["study"].pk).ok


def test_edited_event_is_named(light_world):
    study = light_world["study"]
    target = AuditEvent.objects.get(study_id=study.pk, action="participation.declined")
    with trigger_disabled():
        AuditEvent.objects.filter(pk=target.pk).update(data={**target.data, "reason": ""})
    with pytest.raises(CommandError, match=rf"study:{study.pk} event #{target.seq}: event #{target.seq} "
                                           r"\(participation.declined\) was edited"):
        verify_cmd(study.pk)
    with pytest.raises(CommandError):  # and the all-streams run fails too
        verify_cmd()


def test_edited_and_rehashed_event_breaks_the_next_link(light_world):
    from audit.chain import event_hash
    from audit.selectors import event_as_dict

    study = light_world["study"]
    target = ev(study, 3)
    forged = {**event_as_dict(target), "actor": "user:666:mallory"}
    with trigger_disabled():
        AuditEvent.objects.filter(pk=target.pk).update(actor="user:666:mallory", hash=event_hash(forged))
    res = verify_study_chain(study.pk)
    assert not res.ok and res.broken_seq == 4 and "does not link" in res.problem


def test_deleted_event_is_named(light_world):
    study = light_world["study"]
    with trigger_disabled():
        ev(study, 3).delete()
    with pytest.raises(CommandError, match=r"event #3 is missing \(deleted\)"):
        verify_cmd(study.pk)


def test_deleted_newest_event_is_caught_by_the_head(light_world):
    study = light_world["study"]
    last = AuditHead.objects.get(stream=f"study:{study.pk}").seq
    with trigger_disabled():
        ev(study, last).delete()
    with pytest.raises(CommandError, match=rf"the chain ends at event #{last - 1} but the recorded head is #{last}"):
        verify_cmd(study.pk)


def test_reordered_events_are_named(light_world):
    study = light_world["study"]
    a, b = ev(study, 2), ev(study, 3)
    with trigger_disabled(), connection.cursor() as cur:  # swap the two rows' places in the table
        cur.execute("UPDATE audit_auditevent SET id = -id WHERE id IN (%s, %s)", [a.pk, b.pk])
        cur.execute("UPDATE audit_auditevent SET id = %s WHERE id = %s", [b.pk, -a.pk])
        cur.execute("UPDATE audit_auditevent SET id = %s WHERE id = %s", [a.pk, -b.pk])
    with pytest.raises(CommandError, match=r"event #2 is out of order \(reordered\): found #3"):
        verify_cmd(study.pk)


def test_renumbered_events_are_caught(light_world):
    """Swapping two events' sequence numbers (so they read in the other order) is caught too."""
    study = light_world["study"]
    a, b = ev(study, 2), ev(study, 3)
    with trigger_disabled(), connection.cursor() as cur:
        cur.execute("UPDATE audit_auditevent SET seq = 1000 WHERE id = %s", [a.pk])
        cur.execute("UPDATE audit_auditevent SET seq = 2 WHERE id = %s", [b.pk])
        cur.execute("UPDATE audit_auditevent SET seq = 3 WHERE id = %s", [a.pk])
    res = verify_study_chain(study.pk)
    assert not res.ok and res.broken_seq == 2, res


# ---------------------------------------------------------------- export + the documented procedure

def documented_snippet() -> str:
    text = (REPO / "docs" / "audit.md").read_text()
    m = re.search(r"<!-- verify-snippet:start -->\s*```python\n(.*?)```\s*<!-- verify-snippet:end -->", text, re.S)
    assert m, "docs/audit.md lost its verification snippet"
    return m.group(1)


def run_snippet(tmp_path, export: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "verify_chain.py"
    script.write_text(documented_snippet())
    # -I: isolated mode, nothing of ours on the path; the snippet needs only the standard library.
    return subprocess.run([sys.executable, "-I", str(script), str(export)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)


def test_export_reverifies_with_the_documented_snippet(light_world, tmp_path, capsys):
    study = light_world["study"]
    # Unicode and floats in event data must survive the round trip through PostgreSQL and the export.
    from audit.services import audit_record

    with transaction.atomic():
        audit_record(action="test.note", study_id=study.pk, consortium_id=study.consortium_id,
                     data={"note": "Hôpital Saint-Éloi — ε ≤ 1", "eps": 0.30000000000000004, "delta": 1e-05,
                           "big": 2 ** 53 + 1, "nested": [{"z": 1, "a": None}]})
    out = tmp_path / "study.jsonl"
    call_command("audit_export", "--study", str(study.pk), "--format", "jsonl", "--output", str(out))
    head = AuditHead.objects.get(stream=f"study:{study.pk}")
    assert head.hash in capsys.readouterr().err
    lines = out.read_text(encoding="ascii").splitlines()
    assert len(lines) == head.seq
    first = json.loads(lines[0])
    assert set(first) == {"stream", "seq", "created_at", "actor", "action", "object_type", "object_id",
                          "consortium_id", "study_id", "hospital_id", "data", "prev_hash", "hash"}
    r = run_snippet(tmp_path, out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"OK: {head.seq} events; head hash {head.hash}"
    # The same procedure catches an edited, a deleted and a swapped line.
    edited = [json.loads(x) for x in lines]
    edited[2]["actor"] = "user:666:mallory"
    cases = {
        "edited": ([json.dumps(e) for e in edited], r"line 3, event #3 .*edited"),
        "deleted": (lines[:3] + lines[4:], r"line 4, event #5 .*deleted or reordered"),
        "swapped": (lines[:1] + [lines[2], lines[1]] + lines[3:], r"line 2, event #3 .*deleted or reordered"),
    }
    for name, (content, expected) in cases.items():
        p = tmp_path / f"{name}.jsonl"
        p.write_text("\n".join(content) + "\n", encoding="ascii")
        r = run_snippet(tmp_path, p)
        assert r.returncode == 1, (name, r.stdout)
        assert re.search(expected, r.stderr), (name, r.stderr)


def test_export_of_unknown_study_fails(postgres):
    with pytest.raises(CommandError, match="no audit events"):
        call_command("audit_export", "--study", "999999", "--format", "jsonl")


@pytest.mark.django_db(transaction=True)
def test_cli_exit_status_names_the_broken_link(postgres, tmp_path):
    """The real command line, as an operator runs it: exit status 1 naming the edited event."""
    import os

    from audit_support import enrolled, make_study

    from consortia.services import consortium_create
    from devstack.localstack import db_url_for_children

    c = consortium_create(name="CLI consortium")
    study = make_study(c, [enrolled(c, "A"), enrolled(c, "B")])
    env = {**os.environ, "DATABASE_URL": db_url_for_children(connection)}

    def run():
        return subprocess.run([sys.executable, "manage.py", "audit_verify", "--study", str(study.pk)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)

    with trigger_disabled():
        AuditEvent.objects.filter(stream=f"study:{study.pk}", seq=2).update(actor="user:666:mallory")
    r = run()
    assert r.returncode == 1
    assert f"study:{study.pk} event #2: event #2 (study.recruiting) was edited" in r.stderr
