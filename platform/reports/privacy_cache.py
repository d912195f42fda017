"""The epsilon recomputation of a study, kept on the study (reports.PrivacyRecomputation).

Rebuilding every hospital's accountant job by job is the expensive part of the audit report. It is
computed when a privacy spend is recorded and when the study ends (the studies services enqueue
``reports.recompute_privacy`` after the commit, see reports/tasks.py), and read by the report.

It cannot go stale: it is stored with the SHA-256 of everything it was computed from (each
spend's accountant inputs and reported epsilon in round order, the study's budget, delta, clip
norm and accountant, each hospital's own cap, the Opacus version and the tolerance). A reader
hashes the same inputs from the database (one query) and uses the stored result only when they
match; otherwise it recomputes, reusing the accountant evaluations already paid for (the memo), so
one new spend costs one evaluation, not the whole history again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import opacus
from django.utils import timezone

from .epsilon_check import REL_TOL, Accountants, RecomputeResult, recompute_study
from .models import PrivacyRecomputation
from .selectors import privacy_spends

log = logging.getLogger(__name__)


def inputs_sha256(study, spends: dict) -> str:
    """The SHA-256 of every input of the recomputation (``spends``: selectors.privacy_spends)."""
    rows = [[name, row["hospital_id"], row["max_epsilon"],
             [[ps.job_id, ps.job.round.number, ps.job.round.attempt, ps.epsilon, ps.delta, ps.noise_multiplier,
               ps.sample_rate, ps.steps, ps.clip_norm, ps.accountant, ps.accountant_version] for ps in row["spends"]]]
            for name, row in spends.items()]
    head = [study.pk, study.epsilon, study.delta, study.clip_norm, study.accountant, opacus.__version__, REL_TOL]
    return hashlib.sha256(json.dumps([head, rows], separators=(",", ":")).encode()).hexdigest()


def cached_recompute(study, *, spends: dict | None = None) -> tuple[RecomputeResult, PrivacyRecomputation]:
    """The study's recomputation as of its current inputs: the stored one if they did not change,
    else computed now (and stored). Returns the result and the row that says when it was computed."""
    spends = privacy_spends(study) if spends is None else spends
    digest = inputs_sha256(study, spends)
    row = PrivacyRecomputation.objects.filter(study=study).first()
    if row is not None and row.inputs_sha256 == digest:
        return RecomputeResult.from_dict(json.loads(row.result_json)), row
    memo = json.loads(row.memo_json) if row is not None else {}
    return _compute_and_store(study, spends, digest, memo)


def refresh(study, *, fresh: bool = False) -> tuple[RecomputeResult, PrivacyRecomputation]:
    """Bring the stored recomputation up to date; ``fresh``: evaluate every accountant again (no memo),
    as `audit_recompute_epsilon` does for an auditor."""
    if not fresh:
        return cached_recompute(study)
    spends = privacy_spends(study)
    return _compute_and_store(study, spends, inputs_sha256(study, spends), {})


def _compute_and_store(study, spends: dict, digest: str, memo: dict) -> tuple[RecomputeResult, PrivacyRecomputation]:
    t0 = time.perf_counter()
    acc = Accountants(memo)
    res = recompute_study(study, accountants=acc, spends=spends)
    seconds = time.perf_counter() - t0
    n = sum(len(r["spends"]) for r in spends.values())
    row, _ = PrivacyRecomputation.objects.update_or_create(study=study, defaults={
        "inputs_sha256": digest, "n_spends": n, "result_json": json.dumps(res.as_dict()),
        "memo_json": json.dumps(acc.memo), "computed_at": timezone.now(), "seconds": seconds})
    log.info("study %s: privacy recomputed (%d spends, %d accountant evaluations, %.2f s)", study.pk, n,
             acc.computed, seconds)
    return res, row
