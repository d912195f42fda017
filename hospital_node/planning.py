"""Before any work: does a study fit this hospital's own limits, and what noise will its jobs use.

The study's own bounds were checked when the work item was parsed (fedproto.study); here only
the hospital's limits (node.toml [limits]) and its privacy budget are checked. Nothing here
writes to the ledger or spends privacy.
"""

from __future__ import annotations

import logging

from fedproto import ddp_config
from fedproto.errors import SpecError
from fedproto.study import StudyConfig

from . import trainer
from .config import Limits
from .context import NodeContext
from .data import Dataset
from .errors import BudgetExceeded, DataError, StatisticsUnusable, TransientError, public_reason
from .ledger import config_sha256

log = logging.getLogger("hospital_node")


class Refuse(Exception):
    """This job must be refused with ``code`` (nothing trained, nothing recorded)."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def check_local_limits(study: StudyConfig, limits: Limits, *, for_training: bool = False) -> list[str]:
    """Reasons why ``study`` does not fit this hospital's limits (empty list if it fits).

    For a training job (``for_training``) a study epsilon above the hospital's max_epsilon is
    not a refusal by itself: the node plans its noise for min(study epsilon, max_epsilon) and
    the budget check refuses the job that would cross the cap."""
    reasons = []
    mtype = study.model["type"]
    if mtype not in limits.allowed_models:
        reasons.append(f"model type {mtype} is not in this hospital's allowed_models ({', '.join(limits.allowed_models)})")
    if study.privacy.epsilon > limits.max_epsilon and not for_training:
        reasons.append(f"study epsilon {study.privacy.epsilon:g} exceeds this hospital's max_epsilon "
                       f"{limits.max_epsilon:g}")
    if study.privacy.delta > limits.max_delta:
        reasons.append(f"study delta {study.privacy.delta:g} exceeds this hospital's max_delta {limits.max_delta:g}")
    if study.rounds > limits.max_rounds:
        reasons.append(f"study rounds {study.rounds} exceeds this hospital's max_rounds {limits.max_rounds}")
    if study.privacy.distributed:
        reasons.extend(distributed_limits(study, limits))
    return reasons


def distributed_limits(study: StudyConfig, limits: Limits) -> list[str]:
    """The refusal rule of distributed mode: the noise is planned study-wide (every share must match),
    so a hospital cannot lower its own epsilon; it refuses a plan that buys more than its max_epsilon,
    stating the model and the collusion threshold the epsilon rests on."""
    try:
        s = ddp_config.statement(study)
    except SpecError as e:
        return [f"distributed-DP study has no valid noise plan: {e}"]
    if s["epsilon"] > limits.max_epsilon:
        return [f"distributed DP (collusion threshold T = {s['collusion']}, {s['honest_shares']} honest noise shares per "
                f"released sum) spends epsilon {s['epsilon']:.4g}, above this hospital's max_epsilon "
                f"{limits.max_epsilon:g}"]
    return []


def plan_job(ctx: NodeContext, study: StudyConfig) -> tuple[trainer.NoisePlan, float, float]:
    """(plan, epsilon after, epsilon before) for the next job of ``study``, or raise Refuse. No writes."""
    reasons = check_local_limits(study, ctx.cfg.limits, for_training=True)
    if reasons:
        raise Refuse("local_limit", "; ".join(reasons))
    if study.privacy.distributed:
        # Training a distributed-DP study with local DP-SGD and an unmasked upload would break its
        # privacy model: such studies go through ddp_round.on_train, never through this DP-SGD plan.
        raise Refuse("unsupported_mode", "a distributed-DP study is trained through the secure-aggregation "
                                         "exchange, never with local DP-SGD; nothing was trained")
    try:
        ds = ctx.dataset(study)
    except StatisticsUnusable as e:
        log.error("study %s: %s", study.study_id, e)
        raise Refuse("statistics_unusable", public_reason(e)) from None
    except (DataError, SpecError) as e:
        log.warning("study %s: local data does not match the study schema: %s", study.study_id, e)
        raise Refuse("data_error", public_reason(e)) from None
    if ds.preprocessing.get("statistics", {}).get("provisional"):
        raise TransientError(f"study {study.study_id}: the statistics round's aggregate is not available yet")
    sid = study.study_id
    row = ctx.ledger.study(sid)
    if row is not None and row["noise_multiplier"] is not None:
        if row["config_sha256"] != config_sha256(study):
            raise Refuse("local_limit", "the study's training or privacy configuration changed after this "
                                        "hospital started training it; its privacy plan no longer applies")
        bs, ep = study.batch_size, study.local_epochs
        per_job = trainer.job_steps(ds.n_train, bs, ep)
        plan = trainer.NoisePlan(float(row["noise_multiplier"]), trainer.sample_rate_for(ds.n_train, bs),
                                 per_job, float(row["target_epsilon"]), ds.n_train,
                                 baseline_steps=study.rounds * per_job if wants_baseline(study, ds) else 0)
    else:
        plan = trainer.plan_noise(study, ds.n_train, ctx.cfg.limits.max_epsilon, baseline=wants_baseline(study, ds))
    try:
        after, before = trainer.check_budget(study, ctx.ledger.history(sid), plan, ctx.cfg.limits.max_epsilon)
    except BudgetExceeded as e:
        raise Refuse("budget_exceeded", str(e)) from None
    return plan, after, before


def plan_ahead(ctx: NodeContext, study: StudyConfig) -> None:
    """Compute the study's noise plan (memoised in trainer) while this node waits for others in
    recruitment, not inside the first job: a non-custodian right after approving (it waits
    for the custodian's key), the custodian once it has sealed the keys (it waits for the
    acknowledgements), and after fetching a key if not done yet. Pure arithmetic: no ledger
    write, no spend."""
    try:
        ds = ctx.dataset(study)
        trainer.plan_noise(study, ds.n_train, ctx.cfg.limits.max_epsilon, baseline=wants_baseline(study, ds))
    except Exception as e:  # noqa: BLE001 - the first job plans again and reports any problem
        log.debug("study %s: planning ahead failed (%s); the first job will plan", study.id, e)


def wants_baseline(study: StudyConfig, ds: Dataset) -> bool:
    """Whether this hospital trains the study's local-only baseline (and its plan reserves the
    budget for it): the study asks for one and the hospital has held-out rows to compare on."""
    return bool(study.evaluation["local_baseline"]) and ds.n_test > 0


def plan_dict(plan: trainer.NoisePlan) -> dict[str, float | int]:
    """The plan as the ledger stores it with a study's first job."""
    return {"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
            "steps_per_job": plan.steps_per_job, "n_train": plan.n_train, "target_epsilon": plan.target_epsilon}
