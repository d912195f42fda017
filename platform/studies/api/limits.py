"""Size limits of the free-form fields a node sends (statuses, versions, reasons, metrics).

Each lands in a database row or an audit event that every participant's report shows; beyond
its limit a field is refused with 422 naming the field and the limit (not cut silently).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..services import ServiceError

MAX_STATUS_BYTES = 8192      # heartbeat status, serialised JSON
MAX_STATUS_DEPTH = 4         # nesting of objects/arrays in a heartbeat status
MAX_NODE_VERSION = 64
MAX_REFUSAL_REASON = 4000
MAX_REFUSAL_CODE = 32
MAX_DECISION_REASON = 2000
MAX_METRICS = 64             # metrics of a round report: names
MAX_METRIC_NAME = 64
MAX_SHA256_FIELD = 64


def _invalid(message: str) -> ServiceError:
    return ServiceError(message, code="invalid", status=422)


def text(value: Any, field: str, max_len: int, *, default: str = "") -> str:
    """A string field of at most max_len characters (absent: default)."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise _invalid(f"{field} must be a string")
    if len(value) > max_len:
        raise _invalid(f"{field} is {len(value)} characters; the limit is {max_len}")
    return value


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def heartbeat_status(value: Any) -> dict:
    """A heartbeat's status: a JSON object of at most MAX_STATUS_BYTES and MAX_STATUS_DEPTH levels."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("status must be a JSON object")
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_STATUS_BYTES:
        raise _invalid(f"status is {size} bytes as JSON; the limit is {MAX_STATUS_BYTES}")
    if _depth(value) > MAX_STATUS_DEPTH:
        raise _invalid(f"status nests deeper than {MAX_STATUS_DEPTH} levels")
    return value


def metrics(value: Any) -> Any:
    """A round report's metrics: at most MAX_METRICS names of at most MAX_METRIC_NAME characters
    (their values are checked by the service)."""
    if isinstance(value, dict):
        if len(value) > MAX_METRICS:
            raise _invalid(f"metrics has {len(value)} names; the limit is {MAX_METRICS}")
        long = [k for k in value if isinstance(k, str) and len(k) > MAX_METRIC_NAME]
        if long:
            raise _invalid(f"metric name {long[0][:40]!r}... is longer than {MAX_METRIC_NAME} characters")
    return value


LOCAL_ONLY_NUMBERS = {"epsilon": (0.0, None), "noise_multiplier": (0.0, None), "sample_rate": (0.0, 1.0)}
LOCAL_ONLY_COUNTS = ("n_train", "n_test", "steps")


def local_only(value: Any) -> dict | None:
    """The local-only baseline a node reports with its final evaluation (hospital_node/baseline.py):
    {"metrics": {name: number}, "n_train", "n_test", "steps": integers >= 0, "epsilon" > 0,
    "noise_multiplier" > 0, "sample_rate" in (0, 1]}; absent: None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid("local_only must be an object (the local-only baseline's metrics and privacy inputs)")
    want = {"metrics", *LOCAL_ONLY_NUMBERS, *LOCAL_ONLY_COUNTS}
    if set(value) != want:
        raise _invalid(f"local_only must have exactly the fields {', '.join(sorted(want))}")
    m = metrics(value["metrics"])
    if not isinstance(m, dict) or not all(isinstance(k, str) and _number(v) for k, v in m.items()):
        raise _invalid("local_only.metrics must be an object of name -> number")
    for k in LOCAL_ONLY_COUNTS:
        v = value[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _invalid(f"local_only.{k} must be a whole number >= 0")
    for k, (lo, hi) in LOCAL_ONLY_NUMBERS.items():
        v = value[k]
        if not _number(v) or not v > lo or (hi is not None and v > hi):
            raise _invalid(f"local_only.{k} must be a number > {lo:g}" + (f" and <= {hi:g}" if hi is not None else ""))
    return {**value, "metrics": {k: float(v) for k, v in m.items()}}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


MAX_PREPROCESSING_BYTES = 256 * 1024


def preprocessing(value: Any) -> dict | None:
    """The global statistics a node reports with the statistics round (round 0): a JSON object of at
    most MAX_PREPROCESSING_BYTES with "statistics" (an object) and "sha256" (hex); absent: None."""
    if value is None:
        return None
    import json

    if not isinstance(value, dict) or not isinstance(value.get("statistics"), dict) \
            or not isinstance(value.get("sha256"), str) or len(value["sha256"]) != 64:
        raise _invalid('preprocessing must be an object {"statistics": {...}, "sha256": "<64 hex>"}')
    if len(json.dumps(value)) > MAX_PREPROCESSING_BYTES:
        raise _invalid(f"preprocessing is over {MAX_PREPROCESSING_BYTES} bytes")
    return value
