"""Recompute every hospital's cumulative epsilon from the accountant inputs the nodes reported.

Each node reports, with every training job, the inputs of its Opacus accountant (noise multiplier,
Poisson sample rate, steps of this job) and the cumulative epsilon its accountant then gave. The
accountant is a pure function of its history [(noise_multiplier, sample_rate, steps) per job, in
round order] and delta, so anyone can rebuild it and check the reported numbers: that is what this
module does, with the same Opacus accountants (RDPAccountant / PRVAccountant) the nodes use.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import opacus
from django.db import transaction
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis

from audit.services import audit_record

from .selectors import privacy_spends

# Relative tolerance between a reported and a recomputed epsilon. The accountants are deterministic
# for a given history; the slack only absorbs float formatting (and, for PRV, tiny numeric drift).
REL_TOL = 1e-4
ABS_TOL = 1e-6
ACCOUNTANTS = ("rdp", "prv")


@dataclass
class JobCheck:
    round: int
    attempt: int
    job_id: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    clip_norm: float
    accountant: str
    accountant_version: str
    reported: float
    recomputed: float | None
    ok: bool
    problem: str = ""


@dataclass
class HospitalCheck:
    hospital: str
    hospital_id: int
    budget: float
    max_epsilon: float | None
    reported: float
    recomputed: float | None
    ok: bool
    within_budget: bool
    jobs: list[JobCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"round {j.round}: {j.problem}" for j in self.jobs if j.problem]


@dataclass
class RecomputeResult:
    study_id: int
    ok: bool
    opacus_version: str
    hospitals: list[HospitalCheck]

    @property
    def mismatches(self) -> list[HospitalCheck]:
        return [h for h in self.hospitals if not h.ok]

    def as_data(self) -> dict:
        """A compact, JSON-able summary (the body of the privacy.recompute audit event)."""
        return {"ok": self.ok, "opacus_version": self.opacus_version, "rel_tol": REL_TOL,
                "hospitals": [{"hospital": h.hospital, "hospital_id": h.hospital_id, "jobs": len(h.jobs),
                               "reported": h.reported, "recomputed": h.recomputed, "ok": h.ok,
                               "within_budget": h.within_budget, "problems": h.problems}
                              for h in self.hospitals]}

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RecomputeResult:
        """The result as_dict() stored (privacy_cache keeps it on the study)."""
        hospitals = [HospitalCheck(**{**h, "jobs": [JobCheck(**j) for j in h["jobs"]]}) for h in d["hospitals"]]
        return cls(study_id=d["study_id"], ok=d["ok"], opacus_version=d["opacus_version"], hospitals=hospitals)


def epsilon_for(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Cumulative epsilon of ``history`` at ``delta`` with a fresh Opacus accountant. A job of 0 steps
    (a retry attempt that re-sent an earlier attempt's update) adds nothing: it is left out, as the
    PRV accountant would otherwise change its numeric domain for it."""
    history = _steps_only(history)
    if not history:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


def _steps_only(history) -> list[tuple[float, float, int]]:
    return [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]


class Accountants:
    """Cumulative epsilons of growing histories, as a fresh Opacus accountant gives them (epsilon_for),
    without paying for the whole history again at every job.

    RDP: the accountant sums, over its history, ``compute_rdp(q, sigma, steps)`` = the RDP of one
    step at each order times ``steps``; the one-step RDP of each distinct (sigma, q) is computed
    once (Opacus' own compute_rdp) and the sum is taken in the accountant's order with the same
    operations, so every number is bit for bit the accountant's. PRV composes numerically over the
    whole history: a prefix is computed by a fresh accountant once, then remembered by its inputs.
    ``memo`` (JSON-able) carries what was computed to the next recomputation (see privacy_cache)."""

    def __init__(self, memo: dict | None = None):
        self.memo = memo if memo is not None else {}
        self._unstorable: dict[str, list[float]] = {}
        self.computed = 0  # accountant evaluations this object paid for (not found in the memo)

    def epsilon(self, history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
        history = _steps_only(history)
        if not history:
            return 0.0
        if accountant == "rdp":
            rdp = sum([self._unit_rdp(s, q) * n for s, q, n in history])
            eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
            return float(eps)
        key = hashlib.sha256(json.dumps([accountant, delta, history]).encode()).hexdigest()
        if key not in self.memo:
            self.memo[key] = epsilon_for(history, delta, accountant)
            self.computed += 1
        return self.memo[key]

    def _unit_rdp(self, sigma: float, q: float):
        key = f"rdp1:{sigma!r}:{q!r}"
        unit = self.memo.get(key, self._unstorable.get(key))
        if unit is None:
            unit = [float(x) for x in rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1,
                                                                orders=RDPAccountant.DEFAULT_ALPHAS)]
            # JSON (and the jsonb column the memo is kept in) has no Infinity: such orders stay here
            (self.memo if all(math.isfinite(x) for x in unit) else self._unstorable)[key] = unit
            self.computed += 1
        return np.array(unit)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def recompute_study(study, *, accountants: Accountants | None = None, spends: dict | None = None) -> RecomputeResult:
    """Rebuild each hospital's accountant job by job and compare with every reported cumulative epsilon.
    ``spends``: selectors.privacy_spends(study), when the caller read it already."""
    acc = accountants or Accountants()
    hospitals: list[HospitalCheck] = []
    for name, row in (spends if spends is not None else privacy_spends(study)).items():
        history: list[tuple[float, float, int]] = []
        jobs: list[JobCheck] = []
        recomputed: float | None = 0.0
        for ps in row["spends"]:
            problem = ""
            history.append((ps.noise_multiplier, ps.sample_rate, ps.steps))
            if ps.accountant not in ACCOUNTANTS:
                recomputed, problem = None, f"unknown accountant {ps.accountant!r}"
            else:
                try:
                    recomputed = acc.epsilon(history, ps.delta, ps.accountant)
                except Exception as exc:  # a history the accountant cannot evaluate is itself a finding
                    recomputed, problem = None, f"accountant failed on the reported inputs: {exc}"
            if not problem and not _close(ps.epsilon, recomputed):
                problem = (f"reported cumulative epsilon {ps.epsilon:.6g} but the inputs give {recomputed:.6g}"
                           + (" (more than reported: the report understates the spend)" if recomputed > ps.epsilon
                              else " (less than reported: a job's spend may be missing from the record)"))
            if not problem and ps.accountant != study.accountant:
                problem = f"accountant {ps.accountant!r} differs from the study's {study.accountant!r}"
            if not problem and not math.isclose(ps.delta, study.delta, rel_tol=1e-9):
                problem = f"delta {ps.delta:g} differs from the study's {study.delta:g}"
            if not problem and not math.isclose(ps.clip_norm, study.clip_norm, rel_tol=1e-9):
                problem = f"clip norm {ps.clip_norm:g} differs from the study's {study.clip_norm:g}"
            jobs.append(JobCheck(round=ps.job.round.number, attempt=ps.job.round.attempt, job_id=ps.job_id,
                                 noise_multiplier=ps.noise_multiplier, sample_rate=ps.sample_rate, steps=ps.steps,
                                 delta=ps.delta, clip_norm=ps.clip_norm, accountant=ps.accountant,
                                 accountant_version=ps.accountant_version, reported=ps.epsilon,
                                 recomputed=recomputed, ok=not problem, problem=problem))
        final = jobs[-1].recomputed if jobs else 0.0
        reported = row["epsilon"]
        cap = min([study.epsilon] + ([row["max_epsilon"]] if row["max_epsilon"] else []))
        within = max(reported, final or 0.0) <= cap + 1e-9
        hospitals.append(HospitalCheck(hospital=name, hospital_id=row["hospital_id"], budget=study.epsilon,
                                       max_epsilon=row["max_epsilon"], reported=reported, recomputed=final,
                                       ok=all(j.ok for j in jobs), within_budget=within, jobs=jobs))
    ok = all(h.ok and h.within_budget for h in hospitals)
    return RecomputeResult(study_id=study.pk, ok=ok, opacus_version=opacus.__version__, hospitals=hospitals)


def recompute_and_record(study, *, actor: str = "system") -> RecomputeResult:
    """Recompute, then append the result to the study's chain as a privacy.recompute event."""
    res = recompute_study(study)
    with transaction.atomic():
        audit_record(action="privacy.recompute", actor=actor, obj=study, study_id=study.pk,
                     consortium_id=study.consortium_id, data=res.as_data())
    return res
