"""The hash chain: canonical encoding of an event and verification of a stream.

The procedure is deliberately simple so a third party can re-verify an export without our code:
hash = SHA-256 over the UTF-8 bytes of the canonical JSON (sorted keys, no spaces, ASCII) of
{"stream", "seq", "created_at", "actor", "action", "object_type", "object_id",
 "consortium_id", "study_id", "hospital_id", "data", "prev_hash"}; prev_hash of the first event
of a stream is 64 zeros.

The event's `data` is hashed as its canonical JSON text, and that exact text is what the database
keeps (AuditEvent.data_canonical) and what an export carries. PostgreSQL's jsonb cannot be the
record: it stores numbers as `numeric` and prints them back in another spelling (1e16 comes back
as the integer 10000000000000000, -0.0 as 0.0), so hashing what jsonb returns raised a false
"edited" alarm for every such value. The canonical text is a fixed point of Python's
json.loads/json.dumps (floats are written as their shortest round-trip repr), so the documented
standalone script, which re-serialises each exported event, computes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from itertools import product
from typing import Any, Iterable, Mapping

GENESIS = "0" * 64
HASHED_FIELDS = ("stream", "seq", "created_at", "actor", "action", "object_type", "object_id",
                 "consortium_id", "study_id", "hospital_id", "data", "prev_hash")
# The members that sort before and after "data" in the canonical JSON (both non-empty).
_BEFORE_DATA = [k for k in HASHED_FIELDS if k < "data"]
_AFTER_DATA = [k for k in HASHED_FIELDS if k > "data"]
# Events written before data_canonical existed whose numbers PostgreSQL respelled: at most this many
# respellings are tried to find the one that was hashed (2 spellings per ambiguous number).
LEGACY_MAX_RESPELLINGS = 4096


class AuditDataError(ValueError):
    """Event data that JSON cannot represent exactly (NaN, Infinity, an integer of more than 4300 digits)."""


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str)


def _first_unrepresentable(value: Any, path: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value!r}"
    if isinstance(value, dict):
        items: Iterable = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _first_unrepresentable(v, f"{path}[{k!r}]")
        if found:
            return found
    return None


def canonical_data(data: Any) -> str:
    """The canonical JSON text of event data (what is hashed and stored). Values JSON has no type for
    (dates, decimals, UUIDs) are written as their str(); NaN and infinities are refused."""
    try:
        return _dumps(data)
    except ValueError as exc:
        where = _first_unrepresentable(data, "data")
        if where:
            raise AuditDataError(f"audit event {where}: NaN and infinite numbers cannot be written as JSON; "
                                 "record a finite number, or the value as a string") from None
        raise AuditDataError(f"audit event data cannot be written as JSON ({exc}); record such a value as a string") from None


def canonical_body(event: Mapping, data_text: str) -> str:
    """The canonical JSON of the hashed fields, with `data` spelled exactly as data_text.

    Equal to json.dumps({k: event[k] ...}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    when data_text is the canonical text of event["data"]; the stored text itself is spliced in, not
    a re-serialisation of it."""
    before = _dumps({k: event[k] for k in _BEFORE_DATA})
    after = _dumps({k: event[k] for k in _AFTER_DATA})
    return f'{before[:-1]},"data":{data_text},{after[1:]}'


def canonical(event: Mapping) -> bytes:
    """The hashed bytes of an event: its data_canonical text when it has one, else its data re-serialised."""
    data_text = event.get("data_canonical")
    return canonical_body(event, data_text if data_text is not None else canonical_data(event["data"])).encode()


def event_hash(event: Mapping) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


# ---------------------------------------------------------------- the queryable jsonb copy of `data`

_NOT_IN_JSONB = re.compile("[\x00\ud800-\udfff]")  # PostgreSQL jsonb refuses U+0000 and lone surrogates


def jsonb_copy(value: Any) -> Any:
    """The data as the jsonb column can hold it (for queries and display; never hashed): strings
    with U+0000 or a lone surrogate get U+FFFD in their place."""
    if isinstance(value, str):
        return _NOT_IN_JSONB.sub("\ufffd", value)
    if isinstance(value, dict):
        return {jsonb_copy(k): jsonb_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonb_copy(v) for v in value]
    return value


def _number(x: Any) -> Decimal | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


def same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values say the same, comparing numbers by their exact decimal value as
    PostgreSQL's numeric does (so 1e16 equals 10000000000000000 and -0.0 equals 0.0)."""
    na, nb = _number(a), _number(b)
    if na is not None or nb is not None:
        return na is not None and nb is not None and na == nb
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def copy_matches(data_text: str, column: Any) -> bool:
    """Whether the jsonb copy still says what the hashed text says (an edit of the copy is an edit)."""
    return same_json(jsonb_copy(json.loads(data_text)), column)


# ---------------------------------------------------------------- events written before data_canonical

def _respelled(x: Any) -> Any:
    """The other value PostgreSQL may have folded into x: a float written with an exponent that jsonb
    printed as an integer (1e16 -> 10000000000000000), or -0.0 printed as 0.0. Only exact spellings
    of the same number qualify, so a respelling never hides an edited value."""
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 10 ** 16:
        try:
            f = float(x)
        except OverflowError:
            return None
        return f if Decimal(repr(f)) == x else None
    if isinstance(x, float) and x == 0.0 and math.copysign(1.0, x) > 0:
        return -0.0
    return None


def _leaves(value: Any) -> list:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _rebuild(value: Any, leaves) -> Any:
    if isinstance(value, dict):
        return {k: _rebuild(v, leaves) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuild(v, leaves) for v in value]
    return next(leaves)


def legacy_data_text(event: Mapping) -> str:
    """The data text an event written before data_canonical existed was hashed with.

    Such events were hashed over the canonical JSON of the Python value, then stored as jsonb only;
    the usual case re-serialises to the same text. When PostgreSQL respelled a number, the exact
    respellings of the same values are tried until one matches the stored hash; if none does, the
    plain re-serialisation is returned (and verification reports the event as edited)."""
    plain = canonical_data(event["data"])
    if hashlib.sha256(canonical_body(event, plain).encode()).hexdigest() == event["hash"]:
        return plain
    leaves = _leaves(event["data"])
    options = [(leaf,) if _respelled(leaf) is None else (leaf, _respelled(leaf)) for leaf in leaves]
    if 2 ** sum(len(o) - 1 for o in options) > LEGACY_MAX_RESPELLINGS:
        return plain
    for choice in product(*options):
        text = canonical_data(_rebuild(event["data"], iter(choice)))
        if hashlib.sha256(canonical_body(event, text).encode()).hexdigest() == event["hash"]:
            return text
    return plain


# ---------------------------------------------------------------- verification

@dataclass
class ChainResult:
    stream: str
    ok: bool
    n_events: int
    head_hash: str
    problem: str = ""
    broken_seq: int | None = None


def verify_events(stream: str, events: Iterable[Mapping], expected_head: tuple[int, str] | None = None) -> ChainResult:
    """Walk events in stored order; name the first broken link.

    Each event is a dict of HASHED_FIELDS + "hash", optionally "data_canonical" (the hashed text of
    `data`) and "data_column" (the jsonb copy, which must say the same). expected_head is the
    stream's recorded (seq, hash), read in the same snapshot as the events."""
    events = list(events)
    present = {ev["seq"] for ev in events}
    prev = GENESIS
    n = 0
    last_seq = 0

    def broken(problem: str, seq: int) -> ChainResult:
        return ChainResult(stream, False, n, prev, problem, seq)

    for ev in events:
        seq = ev["seq"]
        if seq != last_seq + 1:
            expected = last_seq + 1
            what = ("out of order (reordered)" if expected in present or seq <= last_seq
                    else "missing (deleted)")
            return broken(f"event #{expected} is {what}: found #{seq} ({ev['action']}) after #{last_seq}", expected)
        if ev["prev_hash"] != prev:
            return broken(f"event #{seq} does not link to the event before it "
                          "(prev_hash mismatch: deleted, reordered or edited predecessor)", seq)
        h = event_hash(ev)
        if h != ev["hash"]:
            return broken(f"event #{seq} ({ev['action']}) was edited: its content no longer matches its hash", seq)
        if "data_column" in ev and not copy_matches(ev["data_canonical"], ev["data_column"]):
            return broken(f"event #{seq} ({ev['action']}) was edited: its data column no longer matches "
                          "its hashed record", seq)
        prev = h
        last_seq = seq
        n += 1
    if expected_head is not None:
        head_seq, head_hash = expected_head
        if head_seq > last_seq:
            return broken(f"the chain ends at event #{last_seq} but the recorded head is #{head_seq}: "
                          "events at the end were deleted", last_seq + 1)
        if head_seq < last_seq:
            return broken(f"the chain goes on past the recorded head #{head_seq} to event #{last_seq}: "
                          "events were appended without moving the head, or the head was rolled back", head_seq + 1)
        if head_hash != prev:
            return broken(f"the recorded head of event #{head_seq} has another hash than the chain's last event: "
                          "the end of the chain was replaced", head_seq)
    return ChainResult(stream, True, n, prev)
