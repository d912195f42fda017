"""A study's rounds on this node: train a job (plan, train, encrypt, record the spend, upload),
rebuild the global models from the aggregates, evaluate them, upload the final model.

A job's privacy spend is recorded in the ledger (with its encrypted frame on disk) before anything
is uploaded; ``deliver`` then uploads and is safe to repeat after a crash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedproto.codec import get_codec
from fedproto.statistics import STATISTICS_ROUND
from fedproto.statistics import enabled as statistics_enabled
from fedproto.study import StudyConfig
from fedproto.wire import pack_parts

from . import ddp_round, poisoning, statistics_round, trainer
from .baseline import finite_metrics, local_baseline
from .client import Conflict
from .context import NodeContext
from .credentials import write_atomic
from .errors import ApiError
from .keys import secret_for
from .ledger import RESUMABLE_STATES, config_sha256
from .networks import flatten, initial_model, model_from_flat, model_sha256, plain_state_dict
from .planning import Refuse, plan_dict, plan_job
from .tools import package_model

# A final-model release the platform held back (409) is not retried before this: the platform
# stops offering the item until a consortium admin resolves the block.
RELEASE_BLOCKED_RETRY_S = 3600.0

log = logging.getLogger("hospital_node")


# ----------------------------------------------------------------------------- training

def on_train(ctx: NodeContext, item: dict[str, Any], study: StudyConfig) -> None:
    if study.privacy.distributed:  # secure aggregation, one noised gradient sum per round
        ddp_round.on_train(ctx, item, study, global_model=global_model, deliver=deliver)
        return
    if int(item["round"]) == STATISTICS_ROUND and statistics_enabled(study.schema):  # the statistics round
        statistics_round.on_train(ctx, item, study, deliver=deliver)
        return
    job_id, round_no = int(item["job_id"]), int(item["round"])
    sid = study.study_id
    job = ctx.ledger.job(job_id)
    if job is not None and job["state"] in (*RESUMABLE_STATES, "uploaded"):
        log.info("study %s round %s: job %s already trained (state %s); not training again",
                 sid, round_no, job_id, job["state"])
        deliver(ctx, job_id)
        return
    deadline = _parse_time(item.get("deadline"))
    if deadline is not None and deadline < datetime.now(timezone.utc):
        log.warning("study %s round %s: job %s deadline %s has passed; skipping it", sid, round_no, job_id,
                    item.get("deadline"))
        return
    if job is not None and job["state"] != "claimed":
        # trained (a crash before its spend was recorded) or failed: never trained a second time
        log.warning("study %s round %s: job %s is %s in the ledger; refusing it rather than training it again",
                    sid, round_no, job_id, job["state"])
        ctx.client.refuse(job_id, "node_error", f"this node already handled job {job_id} (ledger state "
                                                f"{job['state']}); it is not trained twice")
        return
    if _resend_trained_round(ctx, study, job_id, round_no):
        return
    marks = [("start", time.monotonic())]
    try:
        plan, after, before = plan_job(ctx, study)
    except Refuse as r:
        log.warning("study %s round %s: refusing job %s (%s): %s", sid, round_no, job_id, r.code, r.reason)
        ctx.client.refuse(job_id, r.code, r.reason)
        return
    ds = ctx.dataset(study)
    marks.append(("plan", time.monotonic()))
    model = global_model(ctx, study, round_no - 1, item.get("previous_aggregate"))
    secret = secret_for(ctx, study)
    marks.append(("global model", time.monotonic()))
    if not ctx.ledger.claim_job(study, job_id, round_no, plan_dict(plan)):
        log.warning("study %s round %s: job %s was taken further by another writer; not training it", sid,
                    round_no, job_id)
        return
    privacy = study.privacy
    log.info("study %s round %s: training job %s on %d rows (%d steps, sigma %.3f, q %.4f); "
             "epsilon %.3f -> %.3f of %g", sid, round_no, job_id, ds.n_train, plan.steps_per_job,
             plan.noise_multiplier, plan.sample_rate, before, after, privacy.epsilon)
    t0 = time.monotonic()
    try:
        res = trainer.train_job(study, model, ds.X_train, ds.y_train, plan,
                                grad_sample_mode=ctx.cfg.grad_sample_mode, should_stop=ctx.stop.is_set)
    except trainer.TrainingInterrupted:
        log.info("study %s round %s: job %s abandoned before the end of training (nothing spent, "
                 "nothing uploaded)", sid, round_no, job_id)
        return
    marks.append(("train", time.monotonic()))
    if not ctx.ledger.set_job_state(job_id, "trained"):
        log.warning("study %s round %s: job %s moved on while it trained; discarding this training", sid,
                    round_no, job_id)
        return
    codec = get_codec(study.codec)
    parts = codec.encrypt_update(secret, study.encryption, res.update, ds.n_train, np.random.default_rng())
    frame_path = ctx.cfg.work_dir / "frames" / f"job-{job_id}.flw"
    write_atomic(frame_path, pack_parts(parts), 0o600)
    marks.append(("encrypt", time.monotonic()))
    entry = (plan.noise_multiplier, plan.sample_rate, res.steps)
    history = ctx.ledger.history(sid)
    eps_total = trainer.epsilon_of([*history, entry], privacy.delta, privacy.accountant)
    eps_round = trainer.epsilon_of([entry], privacy.delta, privacy.accountant)
    spend = {"epsilon": eps_total, "delta": privacy.delta,
             "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate, "steps": res.steps,
             "clip_norm": privacy.clip_norm, "accountant": privacy.accountant,
             "accountant_version": trainer.ACCOUNTANT_VERSION, "epsilon_round": eps_round,
             "dp_engine": ctx.cfg.grad_sample_mode}
    ctx.ledger.record_spend(job_id, sid, entry, spend, str(frame_path), update=res.update, n_train=ds.n_train)
    marks.append(("account", time.monotonic()))
    log.debug("study %s round %s: job %s steps: %s", sid, round_no, job_id,
              ", ".join(f"{name} {(t - marks[i][1]) * 1000:.1f} ms" for i, (name, t) in enumerate(marks[1:])))
    log.info("study %s round %s: job %s trained in %.1f s; epsilon spent %.4f of %g (this round %.4f); "
             "recorded, uploading", sid, round_no, job_id, time.monotonic() - t0, eps_total,
             privacy.epsilon, eps_round)
    deliver(ctx, job_id)


def _resend_trained_round(ctx: NodeContext, study: StudyConfig, job_id: int, round_no: int) -> bool:
    """A retried attempt of the round this node trained last (another job, the same round number, so
    the same global model): re-send a fresh encryption of the stored update. That is post-processing
    of an output already released under DP: no new privacy cost, so the spend reported has no steps
    and the unchanged cumulative epsilon, and the ledger's history gets no entry. False: train."""
    sid = study.study_id
    stored = ctx.ledger.trained_update(sid)
    row = ctx.ledger.study(sid)
    if stored is None or stored["round"] != round_no or stored["job_id"] == job_id or row is None:
        return False
    if row["config_sha256"] != config_sha256(study):
        return False  # planning refuses a changed study
    earlier = ctx.ledger.job(stored["job_id"])
    if earlier is None or not earlier["spend_json"]:
        return False
    secret = secret_for(ctx, study)
    if not ctx.ledger.claim_job(study, job_id, round_no, None):
        return True
    spend = {**json.loads(earlier["spend_json"]), "steps": 0, "epsilon_round": 0.0,
             "epsilon": float(row["epsilon_spent"]), "reuses_job": stored["job_id"]}
    codec = get_codec(study.codec)
    parts = codec.encrypt_update(secret, study.encryption, stored["update"], stored["n_train"], np.random.default_rng())
    frame_path = ctx.cfg.work_dir / "frames" / f"job-{job_id}.flw"
    write_atomic(frame_path, pack_parts(parts), 0o600)
    ctx.ledger.record_reuse(job_id, spend, str(frame_path))
    log.info("study %s round %s: job %s retries the round trained by job %s: re-sending a fresh encryption of "
             "that update (no new privacy cost; epsilon stays %.4f)", sid, round_no, job_id, stored["job_id"],
             spend["epsilon"])
    deliver(ctx, job_id)
    return True


def refuse_invalid(ctx: NodeContext, item: dict[str, Any], reason: str) -> None:
    """A train item whose study this node cannot read: refused as outside the local limits, unless
    the job was already trained (then only its delivery is left, which needs no study)."""
    job_id = int(item["job_id"])
    job = ctx.ledger.job(job_id)
    if job is not None and job["state"] in (*RESUMABLE_STATES, "uploaded"):
        deliver(ctx, job_id)
        return
    log.warning("job %s: refusing it (local_limit): %s", job_id, reason)
    ctx.client.refuse(job_id, "local_limit", reason)


def deliver(ctx: NodeContext, job_id: int) -> None:
    """Report the recorded spend, then upload the stored frame (idempotent; resumes after a crash)."""
    job = ctx.ledger.job(job_id)
    if job is None or job["state"] not in RESUMABLE_STATES:
        return
    tag = f"study {job['study_id']} round {job['round']}: job {job_id}"
    try:
        frame = Path(job["frame_path"]).read_bytes()
        if job["state"] == "spend_recorded":
            # The spend rides with the upload (one request); the platform records it first.
            spend = json.loads(job["spend_json"])
            resp = ctx.client.upload_update(job_id, frame, spend=spend)
            if not (isinstance(resp, dict) and resp.get("privacy_spend_recorded")):
                # A duplicate or discarded upload (409) or a platform that ignores the header: report it alone.
                ctx.client.privacy_spend(job_id, spend)
            log.info("%s: privacy spend reported", tag)
        else:
            resp = ctx.client.upload_update(job_id, frame)
    except ApiError as e:
        # Refused for good (any 4xx but 401/403/429): never sent again; the spend stays counted.
        log.error("%s: the platform rejected it (%s); the spend stays counted", tag, e)
        ctx.ledger.set_job_state(job_id, "failed", error=str(e)[:1000])
        _drop_frame(job["frame_path"])
        return
    if isinstance(resp, Conflict) and resp.code != "duplicate":
        # e.g. job_closed: the round no longer takes it (its deadline passed, the round was retried)
        log.warning("%s: the platform discarded the update (409 %s: %s); not sending it again; the spend stays "
                    "counted", tag, resp.code, resp.message)
        ctx.ledger.set_job_state(job_id, "failed", error=f"discarded: 409 {resp.code}: {resp.message}"[:1000])
        _drop_frame(job["frame_path"])
        return
    ctx.ledger.set_job_state(job_id, "uploaded", expect=RESUMABLE_STATES)
    _drop_frame(job["frame_path"])
    if isinstance(resp, Conflict):
        log.info("%s: the platform already held this update (409 duplicate); nothing sent again", tag)
    else:
        log.info("%s: encrypted update uploaded (%d bytes)", tag, len(frame))


def _drop_frame(path: str) -> None:
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass


def resume_pending(ctx: NodeContext) -> None:
    """Deliver every job whose spend is recorded but whose upload did not go through."""
    for job in ctx.ledger.jobs(states=RESUMABLE_STATES):
        if ctx.stop.is_set():
            return
        deliver(ctx, job["job_id"])


# ----------------------------------------------------------------------------- global models

def global_model(ctx: NodeContext, study: StudyConfig, round_no: int, inline: dict | None = None) -> nn.Module:
    """Global model after ``round_no`` rounds (0 = the initial model); downloads missing aggregates
    (``inline``: an aggregate the platform sent with the work item, used if its hash checks out)."""
    sid = study.study_id
    if round_no <= 0:
        return initial_model(study)
    k = ctx.ledger.latest_global_round(sid, round_no)
    stored = ctx.ledger.global_model(sid, k) if k >= 1 else None
    if stored is not None:
        model = model_from_flat(study, stored[0])
    else:
        k, model = 0, initial_model(study)
    if k == round_no:
        return model
    secret = secret_for(ctx, study)
    for r in range(k + 1, round_no + 1):
        got = _inline_frame(inline, sid, r)
        frame, contributors = got or ctx.client.get_aggregate(sid, r)
        if study.privacy.distributed:
            model, contributors = ddp_round.global_step(ctx, study, model, secret, r, frame)
            res = None
        else:
            res = poisoning.decrypt(ctx, study, secret, r, frame, downloaded=got is None)
            model = trainer.apply_update(model, np.asarray(res.mean_update, dtype=np.float64))
        sha = model_sha256(model)
        ctx.ledger.put_global_model(sid, r, flatten(model), sha)
        log.info("study %s round %s: global model from %s contributor(s), sha256 %s", sid, r,
                 getattr(res, "n_contributors", contributors), sha[:16])
    return model


def _inline_frame(inline: dict | None, sid: int, round_no: int) -> tuple[bytes, int | None] | None:
    """(frame, contributors) of the aggregate a train item carried for ``round_no``, or None
    (absent, another round, or not matching its SHA-256: then the node downloads it)."""
    if not isinstance(inline, dict) or inline.get("round") != round_no:
        return None
    try:
        frame = base64.b64decode(str(inline["frame_b64"]), validate=True)
    except (KeyError, ValueError) as e:
        log.warning("study %s round %s: the aggregate sent with the job is unreadable (%s); downloading it",
                    sid, round_no, e)
        return None
    if hashlib.sha256(frame).hexdigest() != inline.get("sha256"):
        log.warning("study %s round %s: the aggregate sent with the job does not match its SHA-256; "
                    "downloading it", sid, round_no)
        return None
    contributors = inline.get("contributors")
    return frame, (int(contributors) if isinstance(contributors, int) else None)


# ----------------------------------------------------------------------------- evaluation, final model

def on_evaluate(ctx: NodeContext, item: dict[str, Any], study: StudyConfig) -> None:
    sid, round_no = study.study_id, int(item["round"])
    if round_no == STATISTICS_ROUND and statistics_enabled(study.schema):
        statistics_round.on_evaluate(ctx, item, study)
        return
    model = global_model(ctx, study, round_no)
    ds = ctx.dataset(study)
    metrics = finite_metrics(trainer.evaluate(model, ds.X_test, ds.y_test, study.task)) if ds.n_test else {}
    # The attested hash is the model file as it is released: the weights with their preprocessing.
    sha = hashlib.sha256(release_bytes(ctx, study, model)).hexdigest()
    body: dict[str, Any] = {"metrics": metrics, "n_test": ds.n_test, "model_sha256": sha}
    if round_no >= study.rounds:
        try:
            base = local_baseline(ctx, study, ds)
        except trainer.TrainingInterrupted:
            return  # shutting down: evaluated again after the restart
        if base is not None:
            body["local_only"] = base
    row = ctx.ledger.study(sid)
    body["epsilon_spent"] = float(row["epsilon_spent"]) if row else 0.0
    ctx.client.report(sid, round_no, body)
    log.info("study %s round %s: evaluated the global model on %d local test rows: %s (epsilon spent %.4f)",
             sid, round_no, ds.n_test, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None),
             body["epsilon_spent"])


def on_upload_final_model(ctx: NodeContext, item: dict[str, Any], study: StudyConfig) -> None:
    sid, round_no = study.study_id, int(item["round"])
    model = global_model(ctx, study, round_no)
    data = release_bytes(ctx, study, model)
    try:
        ctx.client.upload_final_model(sid, data)
    except ApiError as e:
        if e.status != 409:
            raise
        # The platform holds the release back (e.g. hospitals attested different models): retrying
        # cannot change that, a consortium admin resolves it in the portal. Say so once and wait.
        ctx.defer(item, RELEASE_BLOCKED_RETRY_S)
        log.warning("study %s: the platform holds back the release of the final model (%s: %s); a consortium "
                    "admin must resolve it in the portal. Not retrying for %.0f s.", sid, e.code, e.message,
                    RELEASE_BLOCKED_RETRY_S)
        return
    log.info("study %s: uploaded the final model of round %s (sha256 %s)", sid, round_no,
             hashlib.sha256(data).hexdigest()[:16])


def release_bytes(ctx: NodeContext, study: StudyConfig, model: nn.Module) -> bytes:
    """The model file a study releases: safetensors of the weights whose metadata carries the
    study's preprocessing document and model spec (docs/data.md), identical on every hospital (the
    document is built from the schema and the federated statistics every hospital shares), so
    ``python -m hospital_node predict`` scores raw rows as training prepared them."""
    return package_model(plain_state_dict(model), study.model, ctx.dataset(study).preprocessing)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
