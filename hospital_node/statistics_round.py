"""The statistics round (round 0) on this node: contribute this hospital's noisy statistics vector,
encrypted like a training update, and derive the study's global constants from the decrypted sum
(docs/data.md "Federated statistics", docs/privacy.md "The statistics round").

Before training, every hospital of a study whose schema standardises or imputes with federated
values computes its vector over its training rows (fedproto.statistics.local_vector), adds
Gaussian noise for its share of the budget (the accountant entry (z, 1.0, 1), recorded in the
ledger before anything leaves the node, reported like a job's spend), and uploads it encrypted
under the study key. The platform adds the ciphertexts; only the key holders decrypt the sum. Every
hospital derives the same constants from the same aggregate and prepares its rows with them.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable

import numpy as np

from fedproto import statistics
from fedproto.codec import get_codec
from fedproto.errors import CodecError, SpecError
from fedproto.study import StudyConfig
from fedproto.wire import pack_parts, unpack_parts

from . import trainer
from .context import NodeContext
from .credentials import write_atomic
from .data import load_csv, training_rows
from .errors import ApiError, DataError, StatisticsUnusable, public_reason
from .keys import secret_for
from .ledger import RESUMABLE_STATES
from .planning import check_local_limits

log = logging.getLogger("hospital_node")

DP_ENGINE = "gaussian"  # the spend's dp_engine: one Gaussian mechanism, not DP-SGD


def weight_cap(study: StudyConfig) -> int:
    """The most rows one hospital counts for (the codec's weight cap: the study's declared bound)."""
    return int(study.encryption.get("weight_cap_samples", 1000))


def scale(study: StudyConfig, z: float) -> float:
    return statistics.codec_scale(study.schema, z=z, cap=weight_cap(study),
                                  clip=float(study.encryption.get("update_clip", 1.0)))


def entry_for(ctx: NodeContext, study: StudyConfig) -> tuple[float, float, int]:
    cap = trainer.effective_epsilon_cap(study, ctx.cfg.limits.max_epsilon)
    return statistics.spend_entry(study.schema, cap, study.privacy.delta)


def on_train(ctx: NodeContext, item: dict[str, Any], study: StudyConfig, *, deliver: Callable[[NodeContext, int], None]) -> None:
    """A round-0 job: contribute this hospital's noisy statistics (once; a retried attempt re-sends
    nothing new: the spend was made, a fresh noisy vector would spend again, so it is refused)."""
    job_id, sid = int(item["job_id"]), study.study_id
    job = ctx.ledger.job(job_id)
    if job is not None and job["state"] in (*RESUMABLE_STATES, "uploaded"):
        deliver(ctx, job_id)
        return
    if _resend(ctx, study, job_id, deliver):
        return
    if job is not None or any(j["round"] == statistics.STATISTICS_ROUND for j in ctx.ledger.jobs(sid)):
        ctx.client.refuse(job_id, "node_error", "this hospital already contributed the study's statistics once; "
                                                "a second noisy contribution would spend its budget again")
        return
    reasons = check_local_limits(study, ctx.cfg.limits, for_training=True)
    if reasons:
        ctx.client.refuse(job_id, "local_limit", "; ".join(reasons))
        return
    try:
        X, y = load_csv(ctx.dataset_path(study), study.schema)
        X_tr, y_tr = training_rows(study, X, y)
    except (DataError, SpecError) as e:
        log.warning("study %s: local data does not match the study schema: %s", sid, e)
        ctx.client.refuse(job_id, "data_error", public_reason(e))
        return
    privacy = study.privacy
    entry = entry_for(ctx, study)
    history = ctx.ledger.history(sid)
    cap = trainer.effective_epsilon_cap(study, ctx.cfg.limits.max_epsilon)
    after = trainer.epsilon_of([*history, entry], privacy.delta, privacy.accountant)
    if after > cap + trainer.EPS_TOLERANCE:
        ctx.client.refuse(job_id, "budget_exceeded", f"the statistics round would bring epsilon to {after:.4f}, over "
                                                     f"this hospital's budget {cap:g} in this study")
        return
    secret = secret_for(ctx, study)
    if not ctx.ledger.claim_job(study, job_id, statistics.STATISTICS_ROUND, None):
        return
    z = entry[0]
    vec, std = statistics.contribution(study.schema, X_tr, y_tr, z=z, cap=weight_cap(study))
    codec = get_codec(study.codec)
    parts = codec.encrypt_update(secret, study.encryption, vec / scale(study, z), weight_cap(study),
                                 np.random.default_rng())
    frame_path = ctx.cfg.work_dir / "frames" / f"job-{job_id}.flw"
    write_atomic(frame_path, pack_parts(parts), 0o600)
    spend = {"epsilon": after, "delta": privacy.delta, "noise_multiplier": z, "sample_rate": 1.0, "steps": 1,
             "clip_norm": statistics.sensitivity(study.schema), "accountant": privacy.accountant,
             "accountant_version": trainer.ACCOUNTANT_VERSION,
             "epsilon_round": trainer.epsilon_of([entry], privacy.delta, privacy.accountant), "dp_engine": DP_ENGINE}
    ctx.ledger.record_spend(job_id, sid, entry, spend, str(frame_path), update=vec, n_train=len(X_tr), training=False)
    log.info("study %s round 0: statistics of %d training rows (%d values, noise std %.3g); epsilon spent %.4f of %g",
             sid, len(X_tr), vec.size, std, after, privacy.epsilon)
    deliver(ctx, job_id)


def _resend(ctx: NodeContext, study: StudyConfig, job_id: int, deliver: Callable[[NodeContext, int], None]) -> bool:
    """A retried attempt of round 0 after this node contributed: a fresh encryption of the same noisy
    vector (post-processing: no new cost; the spend names the job it reuses). False: not a retry."""
    import json

    sid = study.study_id
    stored = ctx.ledger.trained_update(sid)
    if stored is None or stored["round"] != statistics.STATISTICS_ROUND or stored["job_id"] == job_id:
        return False
    earlier = ctx.ledger.job(stored["job_id"])
    row = ctx.ledger.study(sid)
    if earlier is None or not earlier["spend_json"] or row is None:
        return False
    secret = secret_for(ctx, study)
    if not ctx.ledger.claim_job(study, job_id, statistics.STATISTICS_ROUND, None):
        return True
    spend = {**json.loads(earlier["spend_json"]), "steps": 0, "epsilon_round": 0.0,
             "epsilon": float(row["epsilon_spent"]), "reuses_job": stored["job_id"]}
    z = entry_for(ctx, study)[0]
    parts = get_codec(study.codec).encrypt_update(secret, study.encryption, stored["update"] / scale(study, z),
                                                  weight_cap(study), np.random.default_rng())
    frame_path = ctx.cfg.work_dir / "frames" / f"job-{job_id}.flw"
    write_atomic(frame_path, pack_parts(parts), 0o600)
    ctx.ledger.record_reuse(job_id, spend, str(frame_path))
    log.info("study %s round 0: job %s retries the statistics of job %s (a fresh encryption, no new privacy cost)",
             sid, job_id, stored["job_id"])
    deliver(ctx, job_id)
    return True


def global_statistics(ctx: NodeContext, study: StudyConfig) -> dict[str, Any] | None:
    """The study's global statistics: from the ledger, else from the round-0 aggregate (downloaded,
    decrypted, checked, derived, kept). None when the study has no statistics round. Raises
    StatisticsUnusable for a sum that cannot be used."""
    if not statistics.enabled(study.schema) or study.privacy.distributed:
        return None
    sid = study.study_id
    got = ctx.ledger.statistics(sid)
    if got is not None:
        return got
    if ctx.ledger.secret(sid) is None:  # an invitation: no key yet, nothing to decrypt
        return statistics.provisional(study.schema)
    try:
        frame, _ = ctx.client.get_aggregate(sid, statistics.STATISTICS_ROUND)
    except ApiError as e:
        if e.status not in (403, 404, 409):
            raise
        # round 0 is not done yet (an invitation, planning ahead): check the data with stand-ins
        return statistics.provisional(study.schema)
    codec = get_codec(study.codec)
    length = statistics.round_length(study.schema, study.n_params, statistics.STATISTICS_ROUND)
    try:
        res = codec.decrypt_aggregate(secret_for(ctx, study), study.encryption, unpack_parts(frame), length)
    except CodecError as e:
        raise StatisticsUnusable(f"the statistics aggregate does not decrypt: {e}",
                                 public=f"the statistics aggregate does not decrypt under the study key ({e})"[:300]) from None
    z = entry_for(ctx, study)[0]
    total = statistics.from_codec(res.mean_update, res.n_contributors, scale(study, z))
    try:
        statistics.check_total(study.schema, total, n_contributors=res.n_contributors, z=z, cap=weight_cap(study))
        derived = statistics.derive(study.schema, total, n_hospitals=res.n_contributors)
    except SpecError as e:
        raise StatisticsUnusable(str(e), public=f"the federated statistics are unusable: {e}"[:500]) from None
    derived = ctx.ledger.put_statistics(sid, derived, hashlib.sha256(frame).hexdigest())
    log.info("study %s: global statistics of %.0f rows from %d hospitals derived", sid, derived["n"],
             res.n_contributors)
    return derived


def on_evaluate(ctx: NodeContext, item: dict[str, Any], study: StudyConfig) -> None:
    """Round 0's report: the hash of the preprocessing document built from the global constants
    (identical at every hospital when they derived the same constants) and the constants themselves
    (the decrypted sum's derived values, which the released model carries anyway)."""
    ds = ctx.dataset(study)
    row = ctx.ledger.study(study.study_id)
    body: dict[str, Any] = {"metrics": {}, "n_test": 0, "model_sha256": statistics.document_sha256(ds.preprocessing),
            "epsilon_spent": float(row["epsilon_spent"]) if row else 0.0,
            "preprocessing": {"statistics": ctx.ledger.statistics(study.study_id),
                              "sha256": statistics.document_sha256(ds.preprocessing)}}
    ctx.client.report(study.study_id, statistics.STATISTICS_ROUND, body)
    log.info("study %s round 0: reported the preprocessing constants (sha256 %s)", study.study_id,
             body["model_sha256"][:16])
