"""Export a study's audit events with their hashes, for independent re-verification (docs/audit.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.chain import canonical_body, verify_events
from audit.selectors import stream_events, stream_snapshot
from audit.services import stream_for


def export_line(ev: dict) -> str:
    """One event as one JSON object: the hashed fields, `data` spelled exactly as it was hashed
    (its stored canonical text), then "hash". ASCII only."""
    return canonical_body(ev, ev["data_canonical"])[:-1] + f',"hash":"{ev["hash"]}"}}'


def export_lines(stream: str):
    """The stream's events, one line each, in stored order."""
    for ev in stream_events(stream):
        yield export_line(ev)


class Command(BaseCommand):
    help = ("Write a study's audit events (JSON Lines, one event per line, with prev_hash and hash) so a third "
            "party can re-verify the chain without our code; see docs/audit.md.")

    def add_arguments(self, parser):
        parser.add_argument("--study", type=int, help="the study whose chain to export")
        parser.add_argument("--platform", action="store_true", help="export the platform stream instead")
        parser.add_argument("--format", choices=["jsonl"], default="jsonl")
        parser.add_argument("--output", type=Path, help="file to write (default: standard output)")

    def handle(self, *args, **opts):
        if not opts["study"] and not opts["platform"]:
            raise CommandError("give --study ID (or --platform)")
        stream = stream_for(opts["study"]) if opts["study"] else "platform"
        # The lines written and the head hash printed come from one snapshot of the stream: events
        # appended meanwhile are in neither.
        events, head = stream_snapshot(stream)
        if not events:
            raise CommandError(f"no audit events in stream {stream!r} (no such study?)")
        out = open(opts["output"], "w", encoding="ascii") if opts["output"] else sys.stdout
        try:
            for ev in events:
                out.write(export_line(ev) + "\n")
        finally:
            if opts["output"]:
                out.close()
        n = len(events)
        res = verify_events(stream, events, expected_head=head)
        # The head hash goes to stderr so stdout stays a clean JSONL stream.
        self.stderr.write(f"exported {n} events of {stream}; head hash {res.head_hash}; "
                          f"chain {'verified' if res.ok else 'BROKEN: ' + res.problem}"
                          + (f"; written to {opts['output']}" if opts["output"] else ""))
