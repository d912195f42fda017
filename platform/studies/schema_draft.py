"""A data-schema draft from a CSV header line or a small sample file (docs/portal.md, "Schema draft").

``draft_schema`` guesses, per column, a type (float, int, bool, categorical, ordinal where the
values look like grades), the categories of a categorical column as the sample shows them,
whether missing values occur (then how to impute them), a suggested label and, for a survival
endpoint, time and event columns by name. The result is a draft for the researcher to confirm;
``fedproto.schema.validate_schema`` has accepted it.

The sample may hold patient values. It is parsed in memory and dropped: nothing here stores,
logs or echoes a cell. Errors (``DraftError``) name columns, row numbers and limits, never a
value. What the draft keeps from the values is what a schema declares anyway: category names,
and numeric ranges rounded outward to one significant digit.
"""

from __future__ import annotations

import csv
import io
import math
import re
from typing import Any

from django.core.files.uploadedfile import InMemoryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from fedproto.errors import SpecError
from fedproto.schema import _NAME, MAX_LEVELS, MAX_VALUE_LENGTH, validate_schema
from fedproto.specs import TASKS

MAX_SAMPLE_BYTES = 256 * 1024  # a header line or a few thousand rows
MAX_COLUMNS = 500
MAX_ROWS = 5000
# Values read as missing: the node's own list (hospital_node.data.MISSING_TOKENS) and a few more that
# spreadsheets write; the draft says "missing" for them and the node must agree (the extra ones are noted).
NODE_MISSING = {"", "nan", "na", "n/a", "null", "none"}
_TRUE, _FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no"}
# A string column becomes categorical when it has at most this many distinct values and they repeat.
MAX_DRAFT_CATEGORIES = 50
_ROMAN = ["I", "II", "III", "IV", "V", "VI"]
_ORDERED_WORDS = [["low", "medium", "high"], ["low", "moderate", "high"], ["mild", "moderate", "severe"],
                  ["none", "mild", "moderate", "severe"], ["small", "medium", "large"]]
_LABEL_NAMES = ("label", "target", "outcome", "y", "class", "status", "event", "death", "dead", "died", "mortality",
                "diagnosis", "response", "result")
_TIME_WORDS = ("time", "days", "months", "years", "weeks", "duration", "survival", "futime", "follow", "stime",
               "los", "tte")
_EVENT_WORDS = ("event", "status", "cens", "death", "dead", "died", "fstat", "delta", "relapse", "fail")


class DraftError(SpecError):
    """The sample cannot be drafted from: what is wrong (no cell value), for a 4xx answer (413 when
    ``too_large``)."""

    def __init__(self, message: str, *, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_SAMPLE_BYTES:
        raise DraftError(f"the sample is {len(data)} bytes; the limit is {MAX_SAMPLE_BYTES} bytes (a header line or a "
                         "few thousand rows is enough)", too_large=True)
    if b"\x00" in data:
        raise DraftError("the sample is not a text CSV file (it contains binary data): upload the CSV, not a "
                         "spreadsheet or an archive")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DraftError(f"the sample is not UTF-8 text (byte {exc.start} cannot be decoded): save the CSV as "
                         "UTF-8") from None
    if not text.strip():
        raise DraftError("the sample is empty: give the CSV header line of the data files, or a small sample file")
    return text


def _read(text: str) -> tuple[list[str], list[list[str]]]:
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as exc:
        raise DraftError(f"the sample is not a valid CSV file ({str(exc).split(':')[0]}): quote fields that "
                         "contain commas, quotes or line breaks") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if len(header) > MAX_COLUMNS:
        raise DraftError(f"the sample has {len(header)} columns; the limit is {MAX_COLUMNS}")
    if len(header) < 2:
        sep = next((s for s in (";", "\t", "|") if s in header[0]), None)
        hint = f" (the header uses {sep!r}: the nodes read comma-separated files)" if sep else ""
        raise DraftError("the sample needs at least two comma-separated columns (features and the label)" + hint)
    empty = [i + 1 for i, h in enumerate(header) if not h]
    if empty:
        raise DraftError(f"column(s) {empty[:10]} of the header have no name: name every column")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DraftError(f"column name(s) {dupes[:10]} appear more than once in the header: each column needs its "
                         "own name")
    bad = [h for h in header if not _NAME.match(h)]
    if bad:
        raise DraftError(f"column name(s) {[b[:40] for b in bad[:5]]} are not usable: use letters, digits, _ . - and "
                         "spaces, starting with a letter or _ (at most 128 characters)")
    if len(body) > MAX_ROWS:
        raise DraftError(f"the sample has {len(body)} data rows; the limit is {MAX_ROWS} (a few hundred is enough)")
    for n, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise DraftError(f"line {n} of the sample has {len(r)} fields but the header has {len(header)}: every "
                             "row needs one field per column")
    return header, body


def _is_int(v: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", v) is not None


def _float(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _nice_range(lo: float, hi: float) -> list[float]:
    """[lo, hi] rounded outward to one significant digit of the larger magnitude (never the sample's own extremes)."""
    mag = max(abs(lo), abs(hi))
    step = 10.0 ** math.floor(math.log10(mag)) if mag > 0 else 1.0
    a, b = math.floor(lo / step) * step, math.ceil(hi / step) * step
    if a == lo and a != 0:
        a -= step
    if b == hi:
        b += step
    return [float(round(a, 12)), float(round(b, 12))]


def _ordinal_levels(values: set[str]) -> list[str] | None:
    if values <= set(_ROMAN) and len(values) >= 2:
        top = max(_ROMAN.index(v) for v in values)
        return _ROMAN[:top + 1]
    low = {v.lower() for v in values}
    for words in _ORDERED_WORDS:
        if len(low) >= 2 and low <= set(words):
            by_lower = {v.lower(): v for v in values}
            return [by_lower.get(w, w) for w in words]
    return None


def _column(name: str, cells: list[str]) -> dict[str, Any]:
    """What the sample says about one column: {name, type, missing, ...}; type None: header only."""
    present = [c.strip() for c in cells if c.strip().lower() not in NODE_MISSING]
    info: dict[str, Any] = {"name": name, "missing_values": len(present) < len(cells), "type": None}
    if not cells:
        return info
    if not present:
        info.update(type="float", note="no value in the sample: assumed float")
        return info
    low = {v.lower() for v in present}
    if low <= _TRUE | _FALSE:
        info["type"] = "bool"
        return info
    if all(_is_int(v) for v in present):
        nums = [float(v) for v in present]
        info.update(type="int", range=_nice_range(min(nums), max(nums)))
        return info
    nums = [_float(v) for v in present]
    if all(x is not None for x in nums):
        info.update(type="float", range=_nice_range(min(nums), max(nums)))  # type: ignore[type-var]
        return info
    distinct = set(present)
    levels = _ordinal_levels(distinct)
    if levels:
        info.update(type="ordinal", levels=levels)
        return info
    repeats = len(distinct) <= max(2, len(present) // 2)
    if (len(distinct) <= min(MAX_DRAFT_CATEGORIES, MAX_LEVELS) and repeats
            and all(len(v) <= MAX_VALUE_LENGTH for v in distinct)):
        info.update(type="categorical", categories=sorted(distinct))
        return info
    info.update(type="text", note=f"{len(distinct)} distinct values in {len(present)} rows: looks like free text or an "
                                  "identifier; left out of the features (declare its categories to use it)")
    return info


def _feature(col: dict[str, Any]) -> dict[str, Any]:
    f: dict[str, Any] = {"name": col["name"], "type": col["type"] or "float"}
    for k in ("range", "levels", "categories"):
        if k in col:
            f[k] = list(col[k])
    if col["missing_values"]:
        if f["type"] in ("float", "int") and "range" in f:
            f["missing"] = "median"
            f["missing_indicator"] = True
        elif f["type"] in ("bool", "categorical", "ordinal"):
            f["missing"] = "mode"
            f["missing_indicator"] = True
    return f


def _by_words(names: list[str], words: tuple[str, ...]) -> list[str]:
    out = []
    for w in words:
        for n in names:
            if n not in out and (n.lower() == w or re.search(rf"(^|[_ .\-]){re.escape(w)}", n.lower())):
                out.append(n)
    return out


def _label_ok(col: dict[str, Any], task: str) -> bool:
    t = col["type"]
    if t is None:
        return True
    return {"binary_classification": t == "bool", "regression": t in ("float", "int"),
            "multiclass_classification": t in ("categorical", "ordinal", "int")}.get(task, False)


def draft_schema(data: bytes | str, *, task: str = "binary_classification", label: str = "",
                 time: str = "", event: str = "") -> dict[str, Any]:
    """The draft: {"schema": a validated schema, "columns": per-column findings, "label_candidates",
    "survival": {"time": [...], "event": [...]} (survival), "notes": [...]}. DraftError if it cannot."""
    if task not in TASKS:
        raise DraftError(f"task {task!r} is not supported; use one of {', '.join(TASKS)}")
    header, body = _read(_decode(data))
    cols = {h: _column(h, [r[i] for r in body]) for i, h in enumerate(header)}
    notes: list[str] = []
    if not body:
        notes.append("header only: every column is drafted as float; upload a small sample to guess types, "
                     "categories and missing values")
    extra_missing = {v for r in body for v in r if v.strip().lower() in {"?", ".", "-", "missing"}}
    if extra_missing:
        notes.append("some cells are '?', '.', '-' or 'missing': the nodes read only empty, NA, N/A, NaN, null and "
                     "None as missing; convert those cells before a study")
    out: dict[str, Any] = {"task": task, "columns": list(cols.values()), "notes": notes}
    names = list(header)
    for who, value in (("label", label), ("time", time), ("event", event)):
        if value and value not in cols:
            raise DraftError(f"{who} column {value[:100]!r} is not in the sample's header")
    if task == "survival":
        times = [n for n in _by_words(names, _TIME_WORDS) if cols[n]["type"] in (None, "float", "int")]
        events = [n for n in _by_words(names, _EVENT_WORDS) if cols[n]["type"] in (None, "bool") and n not in times]
        out["survival"] = {"time": times, "event": events}
        t = time or (times[0] if times else "")
        e = event or next((n for n in events if n != t), "")
        if not t or not e or t == e:
            raise DraftError("no time and event columns found by name (e.g. 'time', 'futime', 'days' and 'event', "
                             "'status', 'death'): name them with time= and event=")
        label_spec: dict[str, Any] = {"type": "survival", "time": t, "event": e}
        used = {t, e}
    else:
        candidates = [n for n in _by_words(names, _LABEL_NAMES) if _label_ok(cols[n], task)]
        out["label_candidates"] = candidates
        name = label or (candidates[0] if candidates else names[-1])
        col = cols[name]
        label_spec = {"name": name}
        if task == "multiclass_classification":
            classes = col.get("categories") or col.get("levels")
            if classes is None and col["type"] == "int":
                classes = sorted({r[header.index(name)].strip() for r in body} - {""}, key=int)
            if not classes or len(classes) < 2:
                raise DraftError(f"label {name!r}: a multi-class label needs a sample that shows its classes (at "
                                 "least two)")
            label_spec["classes"] = list(classes)
        elif not _label_ok(col, task):
            notes.append(f"label {name!r} does not look like a {task.replace('_', ' ')} label in the sample "
                         f"(it reads as {col['type']}): check it")
        if col["missing_values"]:
            notes.append(f"label {name!r} has missing values in the sample: the nodes refuse rows without a label")
        used = {name}
    features = [_feature(c) for n, c in cols.items() if n not in used and c["type"] != "text"]
    if not features:
        raise DraftError("no feature column is left once the label is taken out")
    try:
        out["schema"] = validate_schema({"task": task, "features": features, "label": label_spec})
    except SpecError as exc:
        raise DraftError(f"the draft is not a valid schema: {exc}") from None
    return out




# ----------------------------------------------------------------------------- reading an upload

class SampleUploadHandler(FileUploadHandler):
    """Keeps an uploaded sample in memory (never a temporary file on disk), at most MAX_SAMPLE_BYTES + 1
    bytes of it; the rest is counted, not kept, so that an oversized upload is refused by its size."""

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.buffer, self.seen = io.BytesIO(), 0

    def receive_data_chunk(self, raw_data, start):
        room = MAX_SAMPLE_BYTES + 1 - self.buffer.tell()
        if room > 0:
            self.buffer.write(raw_data[:room])
        self.seen += len(raw_data)
        return None

    def file_complete(self, file_size):
        self.buffer.seek(0)
        f = InMemoryUploadedFile(self.buffer, self.field_name, self.file_name, self.content_type, self.seen,
                                 self.charset, self.content_type_extra)
        return f


def upload_bytes(f) -> bytes:
    """The bytes of an uploaded sample (its true size checked first: the handler keeps only the limit + 1)."""
    if f.size > MAX_SAMPLE_BYTES:
        raise DraftError(f"the sample is {f.size} bytes; the limit is {MAX_SAMPLE_BYTES} bytes (a header line or a "
                         "few thousand rows is enough)", too_large=True)
    return f.read(MAX_SAMPLE_BYTES + 1)


__all__ = ["MAX_COLUMNS", "MAX_ROWS", "MAX_SAMPLE_BYTES", "DraftError", "SampleUploadHandler", "draft_schema",
           "upload_bytes"]
