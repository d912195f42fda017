"""The hash chain: canonical encoding of an event and verification of a stream.

The procedure is deliberately simple so a third party can re-verify an export without our code:
hash = SHA-256 over the UTF-8 bytes of the canonical JSON (sorted keys, no spaces, ASCII) of
{"stream", "seq", "created_at", "actor", "action", "object_type", "object_id",
 "consortium_id", "study_id", "hospital_id", "data", "prev_hash"}; prev_hash of the first event
of a stream is 64 zeros.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Mapping

GENESIS = "0" * 64
HASHED_FIELDS = ("stream", "seq", "created_at", "actor", "action", "object_type", "object_id",
                 "consortium_id", "study_id", "hospital_id", "data", "prev_hash")


def canonical(event: Mapping) -> bytes:
    body = {k: event[k] for k in HASHED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_hash(event: Mapping) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


@dataclass
class ChainResult:
    stream: str
    ok: bool
    n_events: int
    head_hash: str
    problem: str = ""
    broken_seq: int | None = None


def verify_events(stream: str, events: Iterable[Mapping], expected_head: tuple[int, str] | None = None) -> ChainResult:
    """Walk events (dicts with HASHED_FIELDS + 'hash') in stored order; name the first broken link."""
    events = list(events)
    present = {ev["seq"] for ev in events}
    prev = GENESIS
    n = 0
    last_seq = 0
    for ev in events:
        n += 1
        seq = ev["seq"]
        if seq != last_seq + 1:
            expected = last_seq + 1
            what = ("out of order (reordered)" if expected in present or seq <= last_seq
                    else "missing (deleted)")
            return ChainResult(stream, False, n - 1, prev,
                               f"event #{expected} is {what}: found #{seq} ({ev['action']}) after #{last_seq}", expected)
        if ev["prev_hash"] != prev:
            return ChainResult(stream, False, n - 1, prev, f"event #{seq} does not link to the event before it (prev_hash mismatch: deleted, reordered or edited predecessor)", seq)
        h = event_hash(ev)
        if h != ev["hash"]:
            return ChainResult(stream, False, n - 1, prev, f"event #{seq} ({ev['action']}) was edited: its content no longer matches its hash", seq)
        prev = h
        last_seq = seq
    if expected_head is not None:
        head_seq, head_hash = expected_head
        if head_seq != last_seq or head_hash != prev:
            return ChainResult(stream, False, n, prev, f"the chain ends at event #{last_seq} but the recorded head is #{head_seq}: events at the end were deleted", last_seq + 1)
    return ChainResult(stream, True, n, prev)
