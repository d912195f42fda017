"""A distributed-DP round on this node: the secure-aggregation exchange with the platform
(docs/PROTOCOL.md, "Distributed DP: the round exchange"), the masked contribution
(ddp_update.contribute), its spend in the ledger, the upload, and the unmask answer; and the
global model of a distributed round (decrypt the aggregate, add the correction, decode, step).

The round's SecAggClient state (mask key, self-mask secret, shares held, the survivor list
answered) is kept in the node's work directory, 0600, so a restart resumes the round and never
answers two different survivor lists.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from torch import nn

from fedproto import ddp_config, ddp_slots
from fedproto.codec import get_codec
from fedproto.secagg import KeyDirectory, RoundSetup, SecAggClient, SecAggError, ShareInbox, UnmaskRequest
from fedproto.study import StudyConfig
from fedproto.wire import pack_parts, unpack_parts

from . import ddp_update
from .client import Conflict
from .context import NodeContext
from .credentials import write_atomic
from .errors import ApiError
from .planning import Refuse, check_local_limits

log = logging.getLogger("hospital_node")

POLL_S = 0.5
ACCOUNTANT = "ddg"
ACCOUNTANT_VERSION = "fedproto-ddg-1"


class RoundAbandoned(Exception):
    """This node sits the round out (too late for a stage, shutting down, or the exchange failed)."""


def epsilon_after(study: StudyConfig, rounds: int) -> float:
    """The distributed-DP epsilon of ``rounds`` released sums under the study's plan (the ledger's
    cumulative epsilon; equals the plan's epsilon after all the study's rounds)."""
    return ddp_config.epsilon_after(study, rounds)


def released_sums(ctx: NodeContext, study: StudyConfig) -> int:
    """How many released sums of the study this node's ledger has a spend for (a retried round's
    failed attempt included: its spend stays counted)."""
    row = ctx.ledger.study(study.study_id)
    return int(row["rounds_trained"]) if row is not None else 0


def _state_path(ctx: NodeContext, job_id: int):
    return ctx.cfg.work_dir / "secagg" / f"job-{job_id}.json"


def _save(ctx: NodeContext, job_id: int, client: SecAggClient) -> None:
    write_atomic(_state_path(ctx, job_id), json.dumps(client.export_state()).encode(), 0o600)


def _load(ctx: NodeContext, job_id: int) -> SecAggClient | None:
    p = _state_path(ctx, job_id)
    if not p.exists():
        return None
    return SecAggClient.from_state(json.loads(p.read_text()), ctx.creds.private_key)


def _wait(ctx: NodeContext, method: str, sid: int, round_no: int, stage: str, deadline: float,
          message: dict | None = None) -> dict:
    """A stage's answer, asking again while the platform says not_ready (until ``deadline``)."""
    while True:
        got = ctx.client.secagg(method, sid, round_no, stage, message)
        if not isinstance(got, Conflict):
            return got
        if got.code != "not_ready":
            raise RoundAbandoned(f"{stage}: 409 {got.code}: {got.message}")
        if ctx.stop.is_set() or time.monotonic() > deadline:
            raise RoundAbandoned(f"{stage}: still not ready ({got.message})")
        time.sleep(POLL_S)


def _keys(body: dict) -> dict[int, bytes]:
    import base64

    return {int(k): base64.b64decode(v, validate=True) for k, v in body["node_keys"].items()}


def on_train(ctx: NodeContext, item: dict[str, Any], study: StudyConfig, *, global_model, deliver) -> None:
    """Train (one clipped, noised gradient sum over all records), mask, upload, unmask."""
    job_id, round_no = int(item["job_id"]), int(item["round"])
    deadline = time.monotonic() + study.round_deadline_s + 60
    job = ctx.ledger.job(job_id)
    if job is None or job["state"] == "claimed":
        reasons = check_local_limits(study, ctx.cfg.limits, for_training=True)
        if reasons:
            r = Refuse("local_limit", "; ".join(reasons))
            ctx.client.refuse(job_id, r.code, r.reason)
            return
        over = ddp_config.release_refusal(study, released_sums(ctx, study), ctx.cfg.limits.max_epsilon)
        if over is not None:
            # Nothing trained, no exchange joined, nothing recorded: the ledger keeps the releases made.
            log.warning("study %s round %s: refusing job %s (budget_exceeded): %s", study.study_id, round_no, job_id,
                        over)
            ctx.client.refuse(job_id, "budget_exceeded", over)
            return
        if not _contribute(ctx, item, study, job_id, round_no, deadline, global_model):
            return
    deliver(ctx, job_id)
    job = ctx.ledger.job(job_id)
    if job is not None and job["state"] == "uploaded":
        unmask(ctx, study, job_id, round_no, deadline)


def _contribute(ctx: NodeContext, item: dict, study: StudyConfig, job_id: int, round_no: int, deadline: float,
                global_model) -> bool:
    sid = study.study_id
    ds = ctx.dataset(study)
    model = global_model(ctx, study, round_no - 1, item.get("previous_aggregate"))
    from .keys import secret_for

    secret = secret_for(ctx, study)
    if not ctx.ledger.claim_job(study, job_id, round_no, None):
        return False
    try:
        body = _wait(ctx, "GET", sid, round_no, "setup", deadline)
        setup = RoundSetup.from_dict(body["setup"])
        keys = _keys(body)
        client = _load(ctx, job_id) or SecAggClient(setup, ctx.creds.hospital_id, ctx.creds.private_key)
        _save(ctx, job_id, client)
        _wait(ctx, "POST", sid, round_no, "advert", deadline, client.advert().to_dict())
        directory = KeyDirectory.from_dict(_wait(ctx, "GET", sid, round_no, "directory", deadline)["directory"])
        bundle = client.share(directory, keys)
        _save(ctx, job_id, client)
        _wait(ctx, "POST", sid, round_no, "shares", deadline, bundle.to_dict())
        inbox = ShareInbox.from_dict(_wait(ctx, "GET", sid, round_no, "inbox", deadline)["inbox"])
        client.receive(inbox, keys)
        _save(ctx, job_id, client)
    except (RoundAbandoned, SecAggError, ApiError, KeyError, ValueError) as e:
        log.warning("study %s round %s: job %s sits this round out: %s", sid, round_no, job_id, e)
        ctx.ledger.set_job_state(job_id, "failed", error=f"secure aggregation: {e}"[:1000])
        return False
    rounds_before = released_sums(ctx, study)
    over = ddp_config.release_refusal(study, rounds_before, ctx.cfg.limits.max_epsilon)
    if over is not None:  # another job of the study was recorded meanwhile: still never past the plan
        log.warning("study %s round %s: job %s sits this round out (budget_exceeded): %s", sid, round_no, job_id, over)
        ctx.ledger.set_job_state(job_id, "failed", error=f"budget_exceeded: {over}"[:1000])
        return False
    if not ctx.ledger.set_job_state(job_id, "trained"):
        return False
    t0 = time.monotonic()
    contrib = ddp_update.contribute(study, model, ds.X_train, ds.y_train, client, secret, np.random.default_rng())
    frame_path = ctx.cfg.work_dir / "frames" / f"job-{job_id}.flw"
    write_atomic(frame_path, pack_parts(contrib.parts), 0o600)
    plan = contrib.plan
    eps_total = epsilon_after(study, rounds_before + 1)
    eps_round = epsilon_after(study, 1)
    nm = plan.central_sigma / plan.l2_sensitivity  # noise multiplier of the released sum (honest shares)
    # The exact cumulative epsilon (never capped): release_refusal kept it within the budget.
    spend = {"epsilon": eps_total, "delta": study.privacy.delta, "noise_multiplier": nm,
             "sample_rate": 1.0, "steps": 1, "clip_norm": study.privacy.clip_norm, "accountant": ACCOUNTANT,
             "accountant_version": ACCOUNTANT_VERSION, "epsilon_round": eps_round, "dp_engine": "ddp"}
    ctx.ledger.record_spend(job_id, sid, (nm, 1.0, 1), spend, str(frame_path))
    log.info("study %s round %s: job %s: masked distributed-DP contribution of %d rows in %.1f s (T = %d, %d honest "
             "shares); epsilon %.4f of %g", sid, round_no, job_id, ds.n_train, time.monotonic() - t0,
             plan.collusion, plan.honest_shares, spend["epsilon"], study.privacy.epsilon)
    return True


def unmask(ctx: NodeContext, study: StudyConfig, job_id: int, round_no: int, deadline: float) -> None:
    """Answer the round's unmask request once (the answer-once rule survives restarts)."""
    sid = study.study_id
    client = _load(ctx, job_id)
    if client is None:
        return
    try:
        body = _wait(ctx, "GET", sid, round_no, "unmask", deadline)
        request = UnmaskRequest.from_dict(body["request"])
        resp = client.unmask(request)
        _save(ctx, job_id, client)
        got = _wait(ctx, "POST", sid, round_no, "unmask", deadline, resp.to_dict())
        log.info("study %s round %s: unmask shares sent for survivors %s (unmasked: %s)", sid, round_no,
                 list(request.survivors), got.get("unmasked"))
    except (RoundAbandoned, SecAggError, ApiError, KeyError, ValueError) as e:
        log.warning("study %s round %s: job %s could not unmask: %s", sid, round_no, job_id, e)


def global_step(ctx: NodeContext, study: StudyConfig, model: nn.Module, secret: bytes, round_no: int,
                frame: bytes) -> tuple[nn.Module, int]:
    """The global model after distributed round ``round_no``: decrypt, add the correction, decode."""
    corr_bytes, survivors = ctx.client.secagg_correction(study.study_id, round_no)
    codec = ddp_config.bfv_codec(study)
    expected = get_codec(study.codec).n_parts(study.encryption, study.n_params)
    slots, _ = codec.decrypt_slots(secret, study.encryption, unpack_parts(frame), expected)
    correction = np.frombuffer(corr_bytes, dtype="<u8")
    bounds = ddp_config.packing(study)
    sums = ddp_slots.decode_sum(slots, correction, study.n_params, bounds, len(survivors))
    return ddp_update.global_step(study, model, sums, len(survivors)), len(survivors)
