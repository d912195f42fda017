"""Walk the audit hash chain(s) and name the first broken link; exit 1 if any chain is broken."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.selectors import verify_all, verify_study_chain


class Command(BaseCommand):
    help = ("Verify the tamper-evident audit trail: every event's hash, the link to the event before it and "
            "the recorded head. Exits non-zero naming the first edited, deleted or reordered event.")

    def add_arguments(self, parser):
        parser.add_argument("--study", type=int, help="verify only this study's chain (default: every stream)")

    def handle(self, *args, **opts):
        results = [verify_study_chain(opts["study"])] if opts["study"] else verify_all()
        if opts["study"] and results[0].n_events == 0 and results[0].ok:
            raise CommandError(f"study {opts['study']} has no audit events (no such study?)")
        broken = [r for r in results if not r.ok]
        for r in results:
            if r.ok:
                self.stdout.write(f"OK      {r.stream}: {r.n_events} events, head {r.head_hash}")
            else:
                self.stdout.write(f"BROKEN  {r.stream}: {r.problem} "
                                  f"(first broken link: event #{r.broken_seq}; {r.n_events} events verified before it)")
        if broken:
            raise CommandError(f"{len(broken)} of {len(results)} audit chain(s) broken; first: "
                               f"{broken[0].stream} event #{broken[0].broken_seq}: {broken[0].problem}")
        self.stdout.write(self.style.SUCCESS(f"{len(results)} chain(s) verified, "
                                             f"{sum(r.n_events for r in results)} events"))
