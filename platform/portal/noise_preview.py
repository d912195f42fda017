"""What a privacy budget implies: the DP-SGD noise multiplier for given dataset sizes.

Computed with Opacus's own accountant (the one the nodes use), so the numbers a researcher sees
before starting are those a node will compute for the same data size.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

from fedproto.privacy import planned_steps
from fedproto.privacy import sample_rate as poisson_rate

DEFAULT_SIZES = (200, 1000, 5000)


@lru_cache(maxsize=2048)
def noise_multiplier(epsilon: float, delta: float, batch_size: int, n: int, rounds: int, epochs: int,
                     accountant: str = "rdp") -> float | None:
    """None when the budget cannot be met (Opacus raises)."""
    from opacus.accountants.utils import get_noise_multiplier

    sample_rate = poisson_rate(n, batch_size)
    steps = planned_steps(n, batch_size, rounds, epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                              steps=steps, accountant=accountant, epsilon_tolerance=0.01))
        except (ValueError, RuntimeError, OverflowError):
            return None


def budget_table(*, epsilon: float, delta: float, batch_size: int, rounds: int, epochs: int,
                 sizes=DEFAULT_SIZES, accountant: str = "rdp") -> dict:
    eps_cols = sorted({round(epsilon / 2, 4), round(epsilon, 4), round(epsilon * 2, 4)})
    rows = []
    for n in sizes:
        cells = []
        for e in eps_cols:
            sigma = noise_multiplier(float(e), float(delta), int(batch_size), int(n), int(rounds), int(epochs), accountant)
            cells.append({"epsilon": e, "sigma": sigma, "chosen": e == round(epsilon, 4)})
        rows.append({"n": n, "sample_rate": poisson_rate(n, batch_size),
                     "steps": planned_steps(n, batch_size, rounds, epochs), "cells": cells})
    return {"eps_cols": eps_cols, "rows": rows, "delta": delta, "batch_size": batch_size, "rounds": rounds,
            "epochs": epochs, "epsilon": epsilon}


def parse_sizes(text: str | None) -> tuple[int, ...]:
    if not text:
        return DEFAULT_SIZES
    out = []
    for tok in str(text).replace(";", ",").split(","):
        tok = tok.strip()
        if tok.isdigit() and 10 <= int(tok) <= 10_000_000:
            out.append(int(tok))
    return tuple(sorted(set(out))[:6]) or DEFAULT_SIZES
