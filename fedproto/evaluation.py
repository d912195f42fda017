"""How each hospital judges a study's model: the share of its rows it holds out, and the
local-only baseline it trains to compare against (docs/privacy.md, "The collaboration benefit").

A study's ``evaluation`` is ``{"holdout": "auto" | fraction, "local_baseline": bool}``:

* ``holdout``: the share of a hospital's rows kept out of training for its local test split
  (stratified, seeded by the study seed). ``"auto"`` sizes it from the hospital's own row count
  (``holdout_rows``): no split below ``AUTO_MIN_ROWS`` rows (every row trains), 10 % up to
  ``AUTO_LARGE_ROWS`` rows, 20 % above, at most ``AUTO_MAX_TEST_ROWS`` rows. A fraction in
  [0, 0.5] is used as given; 0 means no local evaluation at all.
* ``local_baseline``: the hospital also trains the same model on its own training rows alone,
  with the same settings and the same noise, and reports its score on the same held-out rows
  next to the federated model's. Its privacy cost is part of the hospital's plan from the first
  job: the noise is planned for the federated jobs and the baseline together, so the two end at
  the study's epsilon (hospital_node.trainer.plan_noise). No held-out rows: no baseline.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import SpecError

AUTO = "auto"
MAX_HOLDOUT = 0.5
AUTO_MIN_ROWS = 50       # below: no local test split under "auto" (too few rows to judge, all train)
AUTO_LARGE_ROWS = 500    # from here on: 20 % instead of 10 %
AUTO_MAX_TEST_ROWS = 1000
MIN_TEST_ROWS = 2        # a split smaller than this is no split
DEFAULT_EVALUATION: dict[str, Any] = {"holdout": AUTO, "local_baseline": True}


def validate_evaluation(raw: Any) -> dict[str, Any]:
    """A normalised copy of a study's ``evaluation``, or SpecError naming what to fix."""
    if not isinstance(raw, dict):
        raise SpecError('evaluation must be an object such as {"holdout": "auto", "local_baseline": true}, '
                        f"got {raw!r}")
    extra = set(raw) - set(DEFAULT_EVALUATION)
    if extra:
        raise SpecError(f"evaluation has unknown field(s) {sorted(extra)}; it has holdout and local_baseline")
    holdout = raw.get("holdout", AUTO)
    if holdout != AUTO:
        if (isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not math.isfinite(holdout)
                or not 0 <= holdout <= MAX_HOLDOUT):
            raise SpecError(f'evaluation.holdout must be "auto" or a fraction of the rows between 0 and {MAX_HOLDOUT:g} '
                            f"(0: no local test split), got {holdout!r}")
        holdout = float(holdout)
    baseline = raw.get("local_baseline", True)
    if not isinstance(baseline, bool):
        raise SpecError(f"evaluation.local_baseline must be true or false, got {baseline!r}")
    return {"holdout": holdout, "local_baseline": baseline}


def holdout_rows(n_rows: int, holdout: str | float) -> int:
    """How many of a hospital's ``n_rows`` rows its local test split holds (0: no split)."""
    n = int(n_rows)
    if holdout == AUTO:
        if n < AUTO_MIN_ROWS:
            return 0
        k = min(AUTO_MAX_TEST_ROWS, round((0.1 if n < AUTO_LARGE_ROWS else 0.2) * n))
    else:
        k = round(float(holdout) * n)
    return int(k) if k >= MIN_TEST_ROWS and n - k >= MIN_TEST_ROWS else 0


def describe(evaluation: dict[str, Any]) -> str:
    """One line for pages and reports."""
    h = evaluation["holdout"]
    split = ("held-out share sized per hospital (none under 50 rows, 10 % up to 500, 20 % above, at most 1000 rows)"
             if h == AUTO else "no local test split" if h == 0 else f"{h:.0%} of each hospital's rows held out")
    base = ("local-only baseline under the same noise, its cost inside each hospital's budget"
            if evaluation["local_baseline"] else "no local-only baseline")
    return f"{split}; {base}"
