"""The collaboration benefit of a study, per hospital: the federated model's score on the
hospital's own held-out rows next to the hospital's local-only baseline on the same rows, trained
with the same settings and noise (hospital_node/baseline.py; docs/privacy.md says how its privacy
cost is accounted). From the final round's reports; a hospital whose federated model is worse
than its own local-only model is marked ``worse``: pages and reports show it plainly."""

from __future__ import annotations

from typing import Any

from .access import StudyScope
from .models import RoundReport, Study

# The metric compared, by preference: the first one both models have (higher is better, except rmse).
METRIC_ORDER = ("auc", "c_index", "macro_auc", "accuracy", "rmse")
LOWER_IS_BETTER = {"rmse", "brier"}


def _metric(fed: dict, local: dict) -> str | None:
    for name in METRIC_ORDER:
        if name in fed and name in local:
            return name
    common = [k for k in fed if k in local]
    return common[0] if common else None


def benefit_rows(study: Study, scope: StudyScope | None = None) -> list[dict[str, Any]]:
    """One row per hospital that reported on the final round: {"hospital", "metric", "federated",
    "local_only", "difference" (federated - local-only, sign so that > 0 is better for the federated
    model), "worse", "n_train", "n_test", "epsilon_local_only" (the hospital's cumulative epsilon after the
    baseline), "entry" (the baseline's sigma, q, steps)}; hospitals without a baseline have
    local_only None. ``scope``: a hospital admin sees their own hospital's row only."""
    qs = RoundReport.objects.filter(round__study=study, round__number=study.rounds, superseded_at__isnull=True)
    if scope is not None:
        qs = scope.filter_hospital(qs)
    rows = []
    for rep in qs.select_related("hospital").order_by("hospital__name", "-round__attempt"):
        if any(r["hospital"] == rep.hospital.name for r in rows):
            continue  # an earlier attempt of the final round
        fed = rep.metrics if isinstance(rep.metrics, dict) else {}
        base = rep.local_only if isinstance(rep.local_only, dict) else None
        local = base.get("metrics", {}) if base else {}
        name = _metric(fed, local) if base else next((m for m in METRIC_ORDER if m in fed), None)
        row = {"hospital": rep.hospital.name, "metric": name, "federated": fed.get(name) if name else None,
               "local_only": local.get(name) if name else None, "difference": None, "worse": False,
               "n_test": rep.n_test, "n_train": base.get("n_train") if base else None,
               "epsilon_local_only": base.get("epsilon") if base else None,
               "entry": (base["noise_multiplier"], base["sample_rate"], base["steps"]) if base else None}
        if row["federated"] is not None and row["local_only"] is not None:
            d = float(row["federated"]) - float(row["local_only"])
            row["difference"] = -d if name in LOWER_IS_BETTER else d
            row["worse"] = row["difference"] < 0
        rows.append(row)
    return rows


def benefit_summary(rows: list[dict[str, Any]]) -> str:
    """One sentence: how many hospitals gain from the consortium, and which do not."""
    compared = [r for r in rows if r["difference"] is not None]
    if not compared:
        return "No hospital reported a local-only baseline for this study."
    worse = [r["hospital"] for r in compared if r["worse"]]
    text = f"{len(compared) - len(worse)} of {len(compared)} hospitals score better with the federated model"
    return text + (f"; worse than its own local-only model at: {', '.join(worse)}." if worse else ".")
