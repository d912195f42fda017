"""Per-record conditional randomized rounding (Kairouz, Liu, Steinke 2021, Section 4.1).

Each record's gradient is clipped to L2 <= clip, scaled by 1/gamma and stochastically rounded
coordinate-wise (unbiased), re-drawing the rounding until the integer vector's L2 norm is within
``rounded_l2_bound(clip/gamma, beta, d)`` (one draw succeeds with probability >= 1 - beta). The
hospital's round vector is the integer SUM of its rounded records, so removing one record moves
it by exactly that record's rounded vector: the sensitivity the accountant uses is a hard bound,
not a high-probability one. Rounding randomness is not secret (privacy comes from the noise), so
a numpy Generator is fine here.
"""

from __future__ import annotations

import math

import numpy as np

from .accounting import rounded_l2_bound


def clip_rows(rows: np.ndarray, clip: float) -> np.ndarray:
    """Every row scaled down to L2 norm <= clip (rows already inside are unchanged)."""
    norms = np.linalg.norm(rows, axis=1)
    factor = np.minimum(1.0, clip / np.maximum(norms, np.finfo(float).tiny))
    return rows * factor[:, None]


def conditional_round(x: np.ndarray, l2_bound: float, rng: np.random.Generator, max_tries: int = 200) -> np.ndarray:
    """Unbiased stochastic rounding of the float vector x to int64, conditioned on L2 <= l2_bound."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("conditional_round takes a one-dimensional vector of finite floats")
    low = np.floor(x)
    frac = x - low
    for _ in range(max_tries):
        r = low + (rng.random(x.shape) < frac)
        if math.sqrt(float(np.dot(r, r))) <= l2_bound:
            return r.astype(np.int64)
    raise ValueError(f"no rounding within L2 {l2_bound} after {max_tries} draws: is the vector clipped to the bound's "
                     f"clip and scaled by 1/gamma?")


def rounded_record_sum(per_record: np.ndarray, *, clip: float, gamma: float, beta: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Sum over records (rows) of round(clip(row) / gamma), each rounded row with L2 <= the bound."""
    rows = np.asarray(per_record, dtype=np.float64)
    if rows.ndim != 2 or not np.all(np.isfinite(rows)):
        raise ValueError("per_record must be a finite 2-D array (records x coordinates)")
    if not (clip > 0 and gamma > 0):
        raise ValueError("clip and gamma must be > 0")
    bound = rounded_l2_bound(clip / gamma, beta, rows.shape[1])
    out = np.zeros(rows.shape[1], dtype=np.int64)
    for row in clip_rows(rows, clip) / gamma:
        out += conditional_round(row, bound, rng)
    return out
