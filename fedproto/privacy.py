"""Privacy parameters of a study: the budget, the clip, the accountant, and the privacy model.

``mode`` is ``local`` (the default: every hospital adds the full DP-SGD noise to its own update)
or ``distributed`` (each hospital adds a share of discrete Gaussian noise to one clipped gradient
sum per round and masks it; only the sum over the survivors is ever readable; fedproto/ddp.py,
docs/privacy.md). Distributed mode also records ``collusion`` (T, the most hospitals that may
collude with the platform) and ``quant_step`` (gamma, the quantisation step in model units).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import SpecError

ACCOUNTANTS = ("rdp", "prv")
MODES = ("local", "distributed")
DEFAULT_MODE = "local"
QUANT_STEP_PER_CLIP = 1.0 / 1024  # default gamma = clip_norm / 1024 (a clipped record spans ~1024 integers)
DEFAULT_ACCOUNTANT = "rdp"
# Upper bounds of a study's privacy parameters (each must be > 0).
MAX_EPSILON = 100.0
MAX_DELTA = 0.1
MAX_CLIP_NORM = 1000.0


def validate_privacy(p: Any) -> dict:
    if not isinstance(p, dict):
        raise SpecError('privacy must be an object like {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}')

    def num(key: str, lo: float, hi: float) -> float:
        v = p.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo < v <= hi:
            raise SpecError(f"privacy {key} must be a number in ({lo}, {hi}], got {v!r}")
        return float(v)

    out = {"epsilon": num("epsilon", 0.0, MAX_EPSILON), "delta": num("delta", 0.0, MAX_DELTA),
           "clip_norm": num("clip_norm", 0.0, MAX_CLIP_NORM)}
    acc = p.get("accountant", DEFAULT_ACCOUNTANT)
    if acc not in ACCOUNTANTS:
        raise SpecError(f"privacy accountant {acc!r} is not supported; use one of {', '.join(ACCOUNTANTS)}")
    out["accountant"] = acc
    mode = p.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise SpecError(f"privacy mode {mode!r} is not supported; use local (each hospital adds all the noise) or "
                        f"distributed (secure aggregation, each hospital adds a share)")
    allowed = {"epsilon", "delta", "clip_norm", "accountant", "mode"}
    if mode == "distributed":
        allowed |= {"collusion", "quant_step"}
        t = p.get("collusion")
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise SpecError(f"privacy collusion (T, the most hospitals that may collude with the platform) must be an "
                            f"integer >= 0 in distributed mode, got {t!r}")
        out["mode"], out["collusion"] = mode, t
        out["quant_step"] = (num("quant_step", 0.0, out["clip_norm"]) if "quant_step" in p
                             else out["clip_norm"] * QUANT_STEP_PER_CLIP)
    extra = set(p) - allowed
    if extra:
        hint = " (collusion and quant_step belong to distributed mode)" if extra & {"collusion", "quant_step"} else ""
        raise SpecError(f"privacy has unknown field(s) {sorted(extra)}{hint}")
    return out


# How DP-SGD with Poisson sampling runs on a node (what Opacus's make_private(poisson_sampling=True)
# realises for a loader of ceil(n / batch_size) batches). The node plans and accounts with these,
# and the portal's preview and the auditor's recomputation use the same numbers.

FULL_BATCH = 0  # a study's batch_size 0: each step uses all of the hospital's training rows


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    if int(batch_size) == FULL_BATCH:
        return 1
    return -(-int(n_train) // int(batch_size))


def sample_rate(n_train: int, batch_size: int) -> float:
    return 1.0 / steps_per_epoch(n_train, batch_size)


def planned_steps(n_train: int, batch_size: int, rounds: int, local_epochs: int) -> int:
    return int(rounds) * int(local_epochs) * steps_per_epoch(n_train, batch_size)
