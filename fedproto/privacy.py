"""Privacy parameters of a study (differential privacy on every node)."""

from __future__ import annotations

import math
from typing import Any

from .errors import SpecError

ACCOUNTANTS = ("rdp", "prv")
DEFAULT_ACCOUNTANT = "rdp"


def validate_privacy(p: Any) -> dict:
    if not isinstance(p, dict):
        raise SpecError('privacy must be an object like {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}')

    def num(key: str, lo: float, hi: float) -> float:
        v = p.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo < v <= hi:
            raise SpecError(f"privacy {key} must be a number in ({lo}, {hi}], got {v!r}")
        return float(v)

    out = {"epsilon": num("epsilon", 0.0, 100.0), "delta": num("delta", 0.0, 0.1),
           "clip_norm": num("clip_norm", 0.0, 1000.0)}
    acc = p.get("accountant", DEFAULT_ACCOUNTANT)
    if acc not in ACCOUNTANTS:
        raise SpecError(f"privacy accountant {acc!r} is not supported; use one of {', '.join(ACCOUNTANTS)}")
    out["accountant"] = acc
    extra = set(p) - {"epsilon", "delta", "clip_norm", "accountant"}
    if extra:
        raise SpecError(f"privacy has unknown field(s) {sorted(extra)}")
    return out
