"""A round's aggregate that does not decrypt under the study key (an upload under another key):
say so, check each upload's noise budget (decodes no value: no hospital reads another's update)
and report the budgets, so the platform can exclude the culprit and re-aggregate without it."""

from __future__ import annotations

import hashlib
import logging

from fedproto.codec import AggregateResult, get_codec
from fedproto.errors import CodecError, PoisonedAggregateError
from fedproto.study import StudyConfig
from fedproto.wire import unpack_parts

from .context import NodeContext
from .errors import TransientError

log = logging.getLogger("hospital_node")

_REPORTED: set[tuple[int, int, str]] = set()  # (study, round, aggregate sha256) this process reported


def decrypt(ctx: NodeContext, study: StudyConfig, secret: bytes, round_no: int, frame: bytes, *,
            downloaded: bool) -> AggregateResult:
    """Decrypt round ``round_no``'s aggregate; a poisoned one is diagnosed and reported, then the
    (re-aggregated) copy is fetched, or TransientError says the platform has not re-aggregated yet."""
    codec = get_codec(study.codec)
    sid = study.study_id
    try:
        return codec.decrypt_aggregate(secret, study.encryption, unpack_parts(frame), study.n_params)
    except PoisonedAggregateError as exc:
        error = exc
    if not downloaded:  # the copy sent with the job may predate a re-aggregation
        frame, _ = ctx.client.get_aggregate(sid, round_no)
        try:
            return codec.decrypt_aggregate(secret, study.encryption, unpack_parts(frame), study.n_params)
        except PoisonedAggregateError as exc:
            error = exc
    sha = hashlib.sha256(frame).hexdigest()
    log.error("study %s round %s: the aggregate (sha256 %s) does not decrypt under the study key: %s", sid, round_no,
              sha[:16], error)
    if (sid, round_no, sha) not in _REPORTED:
        out = report(ctx, study, secret, round_no, sha, str(error))
        _REPORTED.add((sid, round_no, sha))
        if out.get("status") in ("reaggregated", "stale"):
            frame, _ = ctx.client.get_aggregate(sid, round_no)
            return codec.decrypt_aggregate(secret, study.encryption, unpack_parts(frame), study.n_params)
    raise TransientError(f"study {sid} round {round_no}: the aggregate does not decrypt under the study key "
                         "(an upload under another key); reported, waiting for the platform to re-aggregate")


def report(ctx: NodeContext, study: StudyConfig, secret: bytes, round_no: int, aggregate_sha256: str,
           error: str) -> dict:
    """Noise budget of each upload in the aggregate, under the study key, reported to the platform."""
    codec = get_codec(study.codec)
    sid = study.study_id
    budgets: dict[str, int] = {}
    for up in ctx.client.round_uploads(sid, round_no):
        job_id = int(up["job_id"])
        blob = ctx.client.get_round_upload(sid, round_no, job_id)
        if hashlib.sha256(blob).hexdigest() != up.get("sha256"):
            raise TransientError(f"study {sid} round {round_no}: upload of job {job_id} does not match its SHA-256")
        try:
            budgets[str(job_id)] = codec.noise_budget(secret, study.encryption, unpack_parts(blob))
        except CodecError as exc:  # not even a ciphertext of these parameters: as foreign as it gets
            log.warning("study %s round %s: upload of job %s does not load (%s)", sid, round_no, job_id, exc)
            budgets[str(job_id)] = 0
    foreign = sorted(j for j, b in budgets.items() if b <= 0)
    out = ctx.client.poison_report(sid, round_no, {"aggregate_sha256": aggregate_sha256, "budgets": budgets,
                                                    "error": error[:500]})
    log.error("study %s round %s: noise budgets of the %d uploads checked; no budget under the study key: job(s) %s; "
              "reported to the platform (%s)", sid, round_no, len(budgets), ", ".join(foreign) or "none",
              out.get("status", "?"))
    return out
