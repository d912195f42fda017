"""A hospital's privacy spend across all its studies: what a data-protection officer asks first.

Read from what the platform stores of each node's reports (PrivacySpend per training job, the
round reports' ``epsilon_spent`` and the local-only baseline's entry); the node's own ledger stays
the enforcer. Which studies are listed is decided by the caller (studies.access: the studies the
viewer may see).

Composition across studies: each study's epsilon is that study's (epsilon, delta) guarantee for
the hospital's records, as its accountant composed the rounds (and the local-only baseline) of
that study. Across studies the total shown is basic sequential composition: the epsilons add up
and the deltas add up. That bound holds whether the studies read the same patients or disjoint
ones, so it is never an under-statement. When the studies used disjoint records (different
patients), parallel composition gives each patient the largest single-study epsilon instead,
which is shown next to it; the platform cannot know whether two data sets share patients (two
data set names may hold the same rows), so it does not choose for the officer. Tighter composition
across studies (RDP) is not computed: the studies' accountants and mechanisms may differ.
A distributed-DP study's epsilon holds only while at most T hospitals collude with the platform
(its row says so); the sum adds it like the others.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Max, QuerySet

from consortia.models import Hospital
from fedproto.datasets import dataset_for

from .models import Participation, PrivacySpend, RoundReport, Study

COMPOSITION = ("sum over studies (basic sequential composition): an upper bound whether the studies used the same "
               "patients or different ones")


def _max(d: dict[int, float], key: int, value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        d[key] = max(float(value), d.get(key, float("-inf")))


def hospital_privacy_spend(hospital: Hospital, studies: QuerySet[Study]) -> dict[str, Any]:
    """The hospital's spend in each of ``studies`` it takes part in, newest first, and the totals.

    {"rows": [{"study", "participation", "status", "privacy_model", "collusion", "dataset",
               "epsilon_budget", "epsilon_cap", "epsilon_spent" (None: nothing reported), "delta",
               "used_pct", "last_reported"}],
     "total_epsilon", "total_delta", "max_epsilon", "n_spending", "composition"}"""
    parts = list(Participation.objects.filter(hospital=hospital, study__in=studies)
                 .select_related("study").order_by("-study__created_at", "-study_id"))
    ids = [p.study_id for p in parts]
    eps: dict[int, float] = {}
    delta: dict[int, float] = {}
    last: dict[int, Any] = {}
    for sid, e, d, at in (PrivacySpend.objects.filter(job__hospital=hospital, job__round__study_id__in=ids)
                          .values("job__round__study_id")
                          .annotate(e=Max("epsilon"), d=Max("delta"), at=Max("reported_at"))
                          .values_list("job__round__study_id", "e", "d", "at")):
        _max(eps, sid, e)
        _max(delta, sid, d)
        last[sid] = at
    # The final round's report includes the local-only baseline's cost (docs/privacy.md): the
    # cumulative epsilon after it is at least the jobs'.
    for sid, e, base in (RoundReport.objects.filter(hospital=hospital, round__study_id__in=ids)
                         .values_list("round__study_id", "epsilon_spent", "local_only")):
        _max(eps, sid, e)
        if isinstance(base, dict):
            _max(eps, sid, base.get("epsilon"))
    rows = []
    for p in parts:
        s = p.study
        spent = eps.get(s.pk)
        budget = s.epsilon
        cap = hospital.max_epsilon if hospital.max_epsilon is not None and hospital.max_epsilon < budget else None
        in_effect = cap if cap is not None else budget
        rows.append({"study": s, "participation": p.state, "status": s.status, "privacy_model": s.privacy_mode,
                     "collusion": s.collusion if s.privacy_mode == "distributed" else None,
                     "dataset": dataset_for(s.datasets or {}, hospital.pk), "epsilon_budget": budget,
                     "epsilon_cap": cap, "epsilon_spent": spent,
                     "delta": delta.get(s.pk, s.delta) if spent is not None else s.delta,
                     "used_pct": round(100.0 * spent / in_effect, 1) if spent is not None and in_effect > 0 else None,
                     "last_reported": last.get(s.pk)})
    spending = [r for r in rows if r["epsilon_spent"] is not None]
    return {"rows": rows, "n_spending": len(spending),
            "total_epsilon": sum(r["epsilon_spent"] for r in spending),
            "total_delta": sum(r["delta"] for r in spending),
            "max_epsilon": max((r["epsilon_spent"] for r in spending), default=0.0),
            "composition": COMPOSITION}
