"""What must hold after every fault scenario, read from the private database and the nodes' own
ledgers (the nodes are stopped first, so their ledgers are at rest):

1. the study completed (the released model included), or failed with a status_reason matching
   what the scenario expects;
2. every DONE round's Aggregate.contributors is exactly the set of hospitals whose job in that
   round is UPLOADED (no accepted update lost, none counted twice), and each round number is
   done at most once;
3. each node's ledger equals the platform's record of its privacy spend: the same jobs, the same
   (sigma, q, steps) per job, the same cumulative epsilon, and one history entry per job that cost
   privacy (a retry attempt that re-sends an earlier job's update records steps 0 and names that
   job, reuses_job: it costs nothing and adds no history entry), plus the local-only baseline's
   run when the hospital reported one (its (sigma, q, steps) and epsilon ride with the final
   round's report, RoundReport.local_only: one more history entry, and the ledger's epsilon is
   the baseline's);
4. `manage.py audit_verify` exits 0;
5. the platform's web server and Celery worker are still running.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

from scenario import Scenario

from devstack.localstack import REPO

REL = 1e-9


def check_invariants(scn: Scenario, *, expect: str = "completed", reason: str | None = None,
                     gone: frozenset[int] = frozenset()) -> None:
    """`gone`: hospitals whose node was killed and never restarted. Their ledger may hold a spend
    recorded just before the kill that never left the machine (state spend_recorded); every
    spend the platform recorded for them must still match."""
    stopping = scn.stop_nodes()
    audit = subprocess.Popen([sys.executable, "manage.py", "audit_verify", "--skip-checks"], cwd=str(REPO), env=scn.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    problems = [f"{p.name} exited ({p.popen.returncode}): a fault must not leave the platform without it"
                for p in scn.platform_procs() if not p.alive()]
    problems += [*_study_outcome(scn, expect, reason), *_aggregates(scn)]
    codes = scn.wait_stopped(stopping)
    scn.mark("nodes stopped")
    problems += [f"{name} did not stop cleanly: {rc}" for name, rc in codes.items() if rc != 0]
    for hid in scn.hospital_ids:
        problems += _ledger_matches_platform(scn, hid, undelivered_ok=hid in gone)
    output, _ = audit.communicate(timeout=300)
    if audit.returncode != 0:
        problems.append(f"audit_verify exited {audit.returncode}:\n{output[-3000:]}")
    scn.mark("invariants checked")
    assert not problems, "invariants violated:\n- " + "\n- ".join(problems) + "\n" + scn.describe()


def _study_outcome(scn: Scenario, expect: str, reason: str | None) -> list[str]:
    s = scn.study()
    if s["status"] != expect:
        return [f"study is {s['status']} ({s['status_reason']!r}); expected {expect}"]
    if expect == "completed":
        done = sorted(r["number"] for r in scn.rounds() if r["status"] == "done")
        if done != list(range(1, s["rounds"] + 1)):
            return [f"completed study's done rounds are {done}, expected 1..{s['rounds']}"]
        if not scn.q("SELECT 1 FROM studies_finalmodel WHERE study_id = %s", scn.study_id):
            return ["completed study has no released model"]
    elif not s["status_reason"] or (reason and not re.search(reason, s["status_reason"])):
        return [f"study {expect} with status_reason {s['status_reason']!r}; expected one matching {reason!r}"]
    return []


def _aggregates(scn: Scenario) -> list[str]:
    problems = []
    rows = scn.q("SELECT r.id, r.number, r.attempt, a.contributors, a.n_contributors FROM studies_round r "
                 "JOIN studies_aggregate a ON a.round_id = r.id WHERE r.study_id = %s AND r.status = 'done' "
                 "ORDER BY r.number", scn.study_id)
    done_numbers = [r["number"] for r in rows]
    if len(done_numbers) != len(set(done_numbers)):
        problems.append(f"a round number is done more than once: {done_numbers}")
    n_done = scn.q("SELECT count(*) AS n FROM studies_round WHERE study_id = %s AND status = 'done'", scn.study_id)[0]["n"]
    if n_done != len(rows):
        problems.append(f"{n_done - len(rows)} done round(s) have no aggregate")
    for r in rows:
        uploaded = sorted(x["hospital_id"] for x in scn.q(
            "SELECT hospital_id FROM studies_trainingjob WHERE round_id = %s AND status = 'uploaded'", r["id"]))
        contributors = list(r["contributors"])
        if sorted(contributors) != uploaded or len(set(contributors)) != len(contributors):
            problems.append(f"round {r['number']}.{r['attempt']}: aggregate contributors {sorted(contributors)} "
                            f"!= hospitals with an uploaded job {uploaded}")
        if r["n_contributors"] != len(contributors):
            problems.append(f"round {r['number']}: n_contributors {r['n_contributors']} != {len(contributors)}")
    return problems


def _ledger_matches_platform(scn: Scenario, hid: int, *, undelivered_ok: bool) -> list[str]:
    tag = f"hospital {hid}"
    platform = {r["job_id"]: r for r in scn.q(
        "SELECT ps.job_id, ps.epsilon, ps.noise_multiplier, ps.sample_rate, ps.steps, ps.reuses_job_id "
        "FROM studies_privacyspend ps "
        "JOIN studies_trainingjob j ON j.id = ps.job_id JOIN studies_round r ON r.id = j.round_id "
        "WHERE r.study_id = %s AND j.hospital_id = %s ORDER BY ps.job_id", scn.study_id, hid)}
    baselines = [r["local_only"] for r in scn.q(
        "SELECT rr.local_only FROM studies_roundreport rr JOIN studies_round r ON r.id = rr.round_id "
        "WHERE r.study_id = %s AND rr.hospital_id = %s AND rr.local_only IS NOT NULL AND rr.superseded_at IS NULL",
        scn.study_id, hid)]
    path = scn.configs[hid].parent / "ledger.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        study = db.execute("SELECT epsilon_spent, history_json FROM studies WHERE study_id = ?", (scn.study_id,)).fetchone()
        jobs = [dict(r) for r in db.execute("SELECT job_id, state, spend_json FROM jobs WHERE study_id = ? "
                                            "AND spend_json IS NOT NULL ORDER BY job_id", (scn.study_id,))]
    finally:
        db.close()
    history = json.loads(study["history_json"]) if study else []
    ledger_eps = float(study["epsilon_spent"]) if study else 0.0
    spent = {j["job_id"]: json.loads(j["spend_json"]) for j in jobs}
    problems = []
    reused = {job_id: r["reuses_job_id"] for job_id, r in platform.items() if r["reuses_job_id"] is not None}
    for job_id, earlier in reused.items():
        if int(platform[job_id]["steps"]) != 0 or earlier not in platform or int(platform[earlier]["steps"]) == 0:
            problems.append(f"{tag}: job {job_id} reuses job {earlier}'s update but is not a zero-cost re-send of a "
                            f"job that was spent ({platform[job_id]['steps']} steps)")
    if len(baselines) > 1:
        problems.append(f"{tag}: {len(baselines)} local-only baselines reported for one study")
    costing = sorted(j for j, s in spent.items() if int(s["steps"]) > 0)
    if len(history) != len(costing) + len(baselines):
        problems.append(f"{tag}: the ledger's privacy history has {len(history)} entries for {len(costing)} "
                        f"job(s) that cost privacy {costing} and {len(baselines)} reported baseline(s) "
                        f"(a job counted twice, or a baseline spent but never reported?)")
    undelivered = {j["job_id"] for j in jobs if j["state"] == "spend_recorded" and j["job_id"] not in platform}
    extra = set(spent) - set(platform) - (undelivered if undelivered_ok else set())
    if extra:
        states = {j["job_id"]: j["state"] for j in jobs if j["job_id"] in extra}
        problems.append(f"{tag}: the node spent on job(s) {states} that the platform has no privacy spend for")
    missing = set(platform) - set(spent)
    if missing:
        problems.append(f"{tag}: the platform recorded spend for job(s) {sorted(missing)} the node's ledger lacks")
    for job_id in set(platform) & set(spent):
        p, mine = platform[job_id], spent[job_id]
        for key in ("epsilon", "noise_multiplier", "sample_rate", "steps"):
            if abs(float(p[key]) - float(mine[key])) > REL * max(1.0, abs(float(p[key]))):
                problems.append(f"{tag} job {job_id}: {key} is {mine[key]} in the ledger, {p[key]} on the platform")
    if not (undelivered_ok and undelivered):
        last = max(platform.values(), key=lambda r: r["job_id"])["epsilon"] if platform else 0.0
        if baselines:
            last = float(baselines[0]["epsilon"])
        if abs(ledger_eps - last) > REL * max(1.0, last):
            problems.append(f"{tag}: the ledger says epsilon {ledger_eps} spent, the platform's last record {last}")
        entries = sorted((round(float(s), 12), round(float(q), 12), int(n)) for s, q, n in history)
        recorded = sorted((round(float(r["noise_multiplier"]), 12), round(float(r["sample_rate"]), 12), int(r["steps"]))
                          for r in [*platform.values(), *baselines] if int(r["steps"]) > 0)
        if entries != recorded:
            problems.append(f"{tag}: ledger history {entries} != platform spends {recorded}")
    return problems
