"""Export a study's audit events with their hashes, for independent re-verification (docs/audit.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.chain import HASHED_FIELDS
from audit.selectors import stream_events, verify_stream
from audit.services import stream_for


def export_lines(stream: str):
    """One JSON object per event: exactly the hashed fields plus "hash", in stored order."""
    for ev in stream_events(stream):
        yield json.dumps({**{k: ev[k] for k in HASHED_FIELDS}, "hash": ev["hash"]}, sort_keys=True,
                         ensure_ascii=True)


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
        out = open(opts["output"], "w", encoding="ascii") if opts["output"] else sys.stdout
        n = 0
        try:
            for line in export_lines(stream):
                out.write(line + "\n")
                n += 1
        finally:
            if opts["output"]:
                out.close()
        if n == 0:
            raise CommandError(f"no audit events in stream {stream!r} (no such study?)")
        res = verify_stream(stream)
        # The head hash goes to stderr so stdout stays a clean JSONL stream.
        self.stderr.write(f"exported {n} events of {stream}; head hash {res.head_hash}; "
                          f"chain {'verified' if res.ok else 'BROKEN: ' + res.problem}"
                          + (f"; written to {opts['output']}" if opts["output"] else ""))
