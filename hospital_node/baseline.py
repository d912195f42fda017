"""The local-only baseline of a study: what this hospital could train on its own rows alone, with
the study's settings and the noise of its plan, scored on the same held-out rows as the federated
model (docs/privacy.md, "The collaboration benefit").

It is trained once, at the final round's evaluation, and its (sigma, q, steps) joins the study's
privacy history in the ledger before its scores go anywhere: the plan reserved it from the first
job (hospital_node.trainer.plan_noise(baseline=True)), so federated jobs and baseline together end
at the study's epsilon. The model itself never leaves the node; its scores are reported with the
final round's evaluation.
"""

from __future__ import annotations

import logging
from typing import Any

from fedproto.study import StudyConfig

from . import trainer
from .context import NodeContext
from .data import Dataset
from .planning import wants_baseline

log = logging.getLogger("hospital_node")


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that have a value (an AUC on one class has none)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def local_baseline(ctx: NodeContext, study: StudyConfig, ds: Dataset) -> dict[str, Any] | None:
    """The study's local-only baseline result, trained now if it was not yet: {"metrics", "n_train",
    "n_test", "epsilon", "noise_multiplier", "sample_rate", "steps"}; None when the study has none
    here (not asked for, no held-out rows, never trained, or the budget left does not cover it)."""
    sid = study.study_id
    done = ctx.ledger.baseline(sid)
    if done is not None or not wants_baseline(study, ds):
        return done
    row = ctx.ledger.study(sid)
    if row is None or row["noise_multiplier"] is None:
        return None  # this hospital never trained the study: nothing to compare with
    sigma = float(row["noise_multiplier"])
    privacy = study.privacy
    planned = (sigma, trainer.sample_rate_for(ds.n_train, study.batch_size),
               study.rounds * trainer.job_steps(ds.n_train, study.batch_size, study.local_epochs))
    history = ctx.ledger.history(sid)
    cap = trainer.effective_epsilon_cap(study, ctx.cfg.limits.max_epsilon)
    if trainer.epsilon_of([*history, planned], privacy.delta, privacy.accountant) > cap + trainer.EPS_TOLERANCE:
        log.warning("study %s: the budget left does not cover the local-only baseline (its plan did not reserve "
                    "it); no baseline is trained or reported", sid)
        return None
    model, entry = trainer.local_only_run(study, ds.X_train, ds.y_train, noise_multiplier=sigma,
                                          grad_sample_mode=ctx.cfg.grad_sample_mode, should_stop=ctx.stop.is_set)
    eps = trainer.epsilon_of([*history, entry], privacy.delta, privacy.accountant)
    metrics = finite_metrics(trainer.evaluate(model, ds.X_test, ds.y_test, study.task))
    result: dict[str, Any] = {"metrics": metrics, "n_train": ds.n_train, "n_test": ds.n_test, "epsilon": eps,
                              "noise_multiplier": entry[0], "sample_rate": entry[1], "steps": entry[2]}
    result = ctx.ledger.record_baseline(sid, entry, eps, result)
    log.info("study %s: local-only baseline trained on %d rows (%d steps, sigma %.3f): %s on %d held-out rows; "
             "epsilon spent %.4f of %g", sid, ds.n_train, entry[2], sigma,
             ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), ds.n_test, eps, privacy.epsilon)
    return result
