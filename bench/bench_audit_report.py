"""Benchmark 5: the study audit report of a 40-round, 4-hospital study, through the portal's view.

Usage:
    python bench/bench_audit_report.py [--rounds 40] [--hospitals 4] [--repeat 5] [--replay-baseline]
                                       [--database-url URL]

Builds a finished study in PostgreSQL (devstack/report_study.py: rounds, jobs, privacy spends with
Opacus epsilons, attestations, aggregates and ~15 audit events per round), then times
GET /audit/studies/<id>/report/ as its auditor (Django test client, DEBUG off, templates compiled
by a first request):

- cached: the epsilon recomputation kept on the study is valid (what a reader sees once a spend
  was recorded or the study ended: the studies services enqueue the recomputation then);
- baseline, uncached: nothing stored, the view recomputes every hospital's accountant itself
  (the first view of a study whose recomputation never ran);
- an input changed (a hospital's cap): the view recomputes, reusing the stored accountant
  evaluations;
- --replay-baseline: also the pre-cache path, a fresh Opacus accountant per job over its whole
  history, as every view did before (minutes at 40 rounds).

Each figure is the median of --repeat requests. Prints each against the uncached baseline (baseline time / its time)
and whether the cached report renders in under 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from benchargs import ensure_database, int_in

TARGET_S = 1.0


def _get(client, url: str) -> float:
    t0 = time.perf_counter()
    resp = client.get(url)
    took = time.perf_counter() - t0
    if resp.status_code != 200 or b"Audit chain verified" not in resp.content:
        raise SystemExit(f"GET {url} answered {resp.status_code}: {resp.content[:300]!r}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int_in(1, 500), default=40)
    ap.add_argument("--hospitals", type=int_in(2, 50), default=4)
    ap.add_argument("--repeat", type=int_in(1, 50), default=5)
    ap.add_argument("--replay-baseline", action="store_true",
                    help="also time the pre-cache path (a fresh accountant per job; minutes at 40 rounds)")
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                             "postgres://postgres@127.0.0.1:5432/bench"))
    args = ap.parse_args()
    ensure_database(args.database_url)
    os.environ.update({"DATABASE_URL": args.database_url, "DJANGO_SETTINGS_MODULE": "config.settings",
                       "FEDPLATFORM_VAR_DIR": tempfile.mkdtemp(prefix="bench-report-"),
                       "FEDPLATFORM_LOG_LEVEL": "WARNING", "DJANGO_DEBUG": "0"})
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from audit.selectors import study_events
    from consortia.models import Hospital, Membership
    from consortia.services import membership_grant
    from devstack.report_study import build_finished_study
    from reports import report
    from reports.epsilon_check import Accountants, epsilon_for
    from reports.models import PrivacyRecomputation

    call_command("migrate", verbosity=0)
    tag = time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    study = build_finished_study(rounds=args.rounds, hospitals=args.hospitals, name=f"Report bench {tag}")
    setup_s = time.perf_counter() - t0
    auditor = get_user_model().objects.create_user(username=f"bench-auditor-{tag}")
    membership_grant(user=auditor, consortium=study.consortium, role=Membership.Role.AUDITOR)
    client = Client()
    client.force_login(auditor)
    url = f"/audit/studies/{study.pk}/report/"
    n_events = study_events(study.pk).count()
    print(f"Audit report: study of {args.rounds} rounds x {args.hospitals} hospitals ({n_events} audit events, "
          f"{args.rounds * args.hospitals} privacy spends), built in {setup_s:.1f} s; GET {url} as the auditor, "
          f"median of {args.repeat}")
    _get(client, url)  # templates compiled, recomputation stored

    def median(fn) -> float:
        return statistics.median(fn() for _ in range(args.repeat))

    def uncached() -> float:
        PrivacyRecomputation.objects.filter(study=study).delete()
        return _get(client, url)

    hospital = Hospital.objects.filter(participations__study=study).order_by("name").first()
    caps = iter([40.0, 45.0] * args.repeat)

    def cap_changed() -> float:
        Hospital.objects.filter(pk=hospital.pk).update(max_epsilon=next(caps))
        return _get(client, url)

    rows = [("baseline: uncached (nothing stored; the view recomputes)", median(uncached))]
    _get(client, url)
    rows.append(("cached (the recomputation kept on the study)", median(lambda: _get(client, url))))
    rows.append(("an input changed (a cap): recomputed from the stored evaluations", median(cap_changed)))
    if args.replay_baseline:
        class Replay(Accountants):
            def epsilon(self, history, delta, accountant):
                return epsilon_for(history, delta, accountant)

        t0 = time.perf_counter()
        ctx = report.build_context(study, cached=False, accountants=Replay())
        report.render_html(study, context=ctx)
        rows.append(("pre-cache path: a fresh accountant per job, every view (once)", time.perf_counter() - t0))
    base = rows[0][1]
    print(f"{'path':72} {'seconds':>8} {'baseline / this':>15}")
    for name, s in rows:
        print(f"{name:72} {s:8.3f} {base / s:14.3g}x")
    cached = rows[1][1]
    print(f"cached audit report of a {args.rounds}-round, {args.hospitals}-hospital study: {cached:.3f} s "
          f"(target < {TARGET_S:.0f} s: {'met' if cached < TARGET_S else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
