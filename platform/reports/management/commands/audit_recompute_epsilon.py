"""Recompute every hospital's cumulative epsilon with Opacus from the inputs the nodes reported."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from reports.epsilon_check import recompute_and_record
from reports.privacy_model import privacy_model_line
from studies.models import Study


class Command(BaseCommand):
    help = ("Rebuild each hospital's Opacus accountant from the reported (noise multiplier, sample rate, steps) of "
            "every job in round order, compare with the reported cumulative epsilon, record the result as a "
            "privacy.recompute audit event, and exit non-zero on any mismatch or budget overrun.")

    def add_arguments(self, parser):
        parser.add_argument("--study", type=int, required=True)

    def handle(self, *args, **opts):
        study = Study.objects.filter(pk=opts["study"]).first()
        if study is None:
            raise CommandError(f"no study {opts['study']}")
        res = recompute_and_record(study, actor="system:audit_recompute_epsilon")
        w = self.stdout.write
        w(f"Study {study.pk} ({study.name}): budget epsilon {study.epsilon:g} at delta {study.delta:g}, "
          f"accountant {study.accountant}; recomputed with Opacus {res.opacus_version}")
        w(f"Privacy model: {privacy_model_line(study)}")
        w(f"{'hospital':30} {'jobs':>4} {'reported':>10} {'recomputed':>10}  result")
        for h in res.hospitals:
            rec = f"{h.recomputed:10.6f}" if h.recomputed is not None else f"{'n/a':>10}"
            verdict = "ok" if h.ok else "MISMATCH"
            if not h.within_budget:
                verdict += ", OVER BUDGET"
            w(f"{h.hospital[:30]:30} {len(h.jobs):4d} {h.reported:10.6f} {rec}  {verdict}")
            for p in h.problems:
                w(f"    {p}")
        if not res.ok:
            bad = [h.hospital for h in res.hospitals if not (h.ok and h.within_budget)]
            raise CommandError(f"privacy accounting does not check out for: {', '.join(bad)} "
                               "(recorded as a privacy.recompute audit event)")
        self.stdout.write(self.style.SUCCESS("every reported epsilon matches its recomputation "
                                             "(recorded as a privacy.recompute audit event)"))
