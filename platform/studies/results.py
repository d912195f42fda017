"""A study's results as data, for scripts and spreadsheets: one row per round report (round,
hospital, test-set size, each metric, ε spent so far), as the viewer may see them (a hospital
admin sees their own hospital's rows only). Served as CSV and JSON by the portal and the API."""

from __future__ import annotations

import csv
import io

from .access import StudyScope
from .models import RoundReport

BASE_COLUMNS = ["round", "attempt", "hospital", "n_test", "epsilon_spent", "model_sha256", "reported_at"]


def result_rows(scope: StudyScope) -> tuple[list[str], list[dict]]:
    """(columns, rows) of the reports still counted (superseded evaluations are left out)."""
    reports = scope.filter_hospital(RoundReport.objects.filter(round__study=scope.study, superseded_at__isnull=True)) \
        .select_related("round", "hospital").order_by("round__number", "round__attempt", "hospital__name")
    metric_names: list[str] = []
    rows = []
    for r in reports:
        metrics = r.metrics if isinstance(r.metrics, dict) else {}
        for k in metrics:
            if k not in metric_names:
                metric_names.append(k)
        rows.append({"round": r.round.number, "attempt": r.round.attempt, "hospital": r.hospital.name,
                     "n_test": r.n_test, "epsilon_spent": r.epsilon_spent, "model_sha256": r.model_sha256,
                     "reported_at": r.reported_at.isoformat(), **{f"metric.{k}": v for k, v in metrics.items()}})
    return BASE_COLUMNS[:5] + [f"metric.{k}" for k in metric_names] + BASE_COLUMNS[5:], rows


def results_json(scope: StudyScope) -> dict:
    s = scope.study
    columns, rows = result_rows(scope)
    final = getattr(s, "final_model", None)
    return {"study": {"id": s.pk, "name": s.name, "status": s.status, "rounds": s.rounds, "epsilon": s.epsilon,
                      "delta": s.delta, "model": s.model_spec},
            "final_model_sha256": final.sha256 if final else None, "columns": columns, "rows": rows}


def _cell(value) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet runs a cell starting with = + - @ as a formula: hospital names come from admins.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def results_csv(scope: StudyScope) -> str:
    columns, rows = result_rows(scope)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()
