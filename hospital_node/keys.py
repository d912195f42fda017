"""The study's HE key: the custodian generates it and publishes the parameters (publish_context),
seals the key for every approved hospital (seal_keys); the others fetch, check and acknowledge it
(fetch_key). The secret never leaves a node unsealed."""

from __future__ import annotations

import base64
import logging
from typing import Any

from fedproto.codec import get_codec, public_params_sha256
from fedproto.errors import CodecError
from fedproto.study import StudyConfig

from .context import NodeContext
from .credentials import open_sealed, seal_for
from .planning import plan_ahead

log = logging.getLogger("hospital_node")

SEAL_BATCH = 32  # sealed keys per request


def on_publish_context(ctx: NodeContext, item: dict[str, Any], study: StudyConfig) -> None:
    sid = study.study_id
    ctx.ledger.remember_study(study)
    codec = get_codec(study.codec)
    secret = ctx.ledger.secret(sid)
    if secret is None:
        secret = codec.generate_secret(study.encryption)
        public = codec.public_params(secret)
        # stored before publishing: a crash after the POST must not produce a second secret
        ctx.ledger.set_secret(sid, secret, public_params_sha256(public))
    public = codec.public_params(secret)
    ctx.client.post_context(sid, codec.name, public)
    log.info("study %s: published the encryption context (%s, params sha256 %s)", sid, codec.name,
             public_params_sha256(public)[:16])


def on_seal_keys(ctx: NodeContext, item: dict[str, Any]) -> None:
    sid = int(item["study_id"])
    secret = ctx.ledger.secret(sid)
    if secret is None:
        raise RuntimeError(f"study {sid}: asked to seal keys but this node holds no secret for it "
                           "(it did not publish the context)")
    keys = [{"hospital_id": r["hospital_id"], "sealed": seal_for(r["public_key"], secret)}
            for r in item.get("recipients", []) if int(r["hospital_id"]) != ctx.creds.hospital_id]
    # In batches: one request with hundreds of sealed keys (~63 KB each) would exceed the
    # platform's request size limit; the platform stores each recipient's key idempotently.
    for i in range(0, len(keys), SEAL_BATCH):
        ctx.client.post_sealed_keys(sid, keys[i:i + SEAL_BATCH])
    log.info("study %s: sealed the study key for %d hospital(s)", sid, len(keys))
    study = ctx.ledger.study_config(sid)  # the item names the study only; the custodian stored it
    if study is not None:
        plan_ahead(ctx, study)


def on_fetch_key(ctx: NodeContext, item: dict[str, Any], study: StudyConfig) -> None:
    sid = study.study_id
    if ctx.ledger.study(sid) is None:
        # The hospital admin approved the study in the portal before this node saw the
        # invitation: the item carries the study config (training still checks local limits).
        ctx.ledger.remember_study(study, invitation_state="approved")
    fetch_key(ctx, study)
    plan_ahead(ctx, study)


def fetch_key(ctx: NodeContext, study: StudyConfig) -> bytes:
    """Fetch the sealed study key, open it, check it against the published parameters, store and
    acknowledge it."""
    sid = study.study_id
    if ctx.ledger.study(sid) is None:
        raise RuntimeError(f"study {sid} is unknown to this node (no invitation or job seen yet); "
                           "the key will be fetched with its first job")
    sealed = ctx.client.get_sealed_key(sid)
    secret = open_sealed(ctx.creds.private_key, sealed["sealed"])
    context = ctx.client.get_context(sid)
    published = base64.b64decode(context["public_params"], validate=True)
    want = context.get("sha256") or public_params_sha256(published)
    if public_params_sha256(published) != want:
        raise CodecError(f"study {sid}: the platform's context sha256 does not match its public params")
    codec = get_codec(context.get("codec") or study.codec)
    mine = public_params_sha256(codec.public_params(secret))
    if mine != want:
        raise CodecError(f"study {sid}: the sealed key's parameters (sha256 {mine[:16]}) do not match the "
                         f"study context (sha256 {want[:16]}); refusing the key")
    ctx.ledger.set_secret(sid, secret, mine)
    ctx.client.key_ack(sid, mine)
    log.info("study %s: received and checked the study key (params sha256 %s)", sid, mine[:16])
    return secret


def secret_for(ctx: NodeContext, study: StudyConfig) -> bytes:
    """The study key held in the ledger, fetched first if this node does not hold it yet."""
    secret = ctx.ledger.secret(study.study_id)
    if secret is None:
        secret = fetch_key(ctx, study)
    return secret
