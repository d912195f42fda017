"""Invitations: approve what fits this hospital's limits and data, decline the rest with the reason,
or leave the decision to the hospital admin (auto_approve off)."""

from __future__ import annotations

import logging
from typing import Any

from fedproto.errors import SpecError
from fedproto.study import StudyConfig

from .context import NodeContext
from .errors import DataError, MissingDataset, public_reason
from .planning import check_local_limits, plan_ahead

log = logging.getLogger("hospital_node")

PENDING_INVITATION_RECHECK_S = 300.0  # an invitation left to the admin is looked at again after this


def on_invitation(ctx: NodeContext, item: dict[str, Any], study: StudyConfig) -> None:
    sid = study.study_id
    reasons = check_local_limits(study, ctx.cfg.limits)
    if not reasons:
        try:
            ctx.dataset(study)
        except MissingDataset as e:
            log.warning("study %s (%s): %s", sid, study.name, e)
            reasons.append(e.public)
        except (DataError, SpecError) as e:
            # The reason goes to the platform (and its audit trail): only the public part of a data
            # error; the path and the offending cell stay in this log.
            log.warning("study %s (%s): local data does not match the study schema: %s", sid, study.name, e)
            reasons.append(f"local data does not match the study schema: {public_reason(e)}")
    if reasons:
        decline(ctx, sid, study.name, "; ".join(reasons))
        ctx.ledger.remember_study(study, invitation_state="declined")
    elif ctx.cfg.limits.auto_approve:
        log.info("study %s (%s): fits local limits (epsilon %g, %s rounds, model %s): approving",
                 sid, study.name, study.privacy.epsilon, study.rounds, study.model["type"])
        resp = ctx.client.decision(sid, "approve", "fits this hospital's limits (auto_approve)")
        ctx.ledger.remember_study(study, invitation_state="approved")
        if isinstance(resp, dict) and resp.get("key_custodian") is False:
            plan_ahead(ctx, study)  # idle until the custodian has generated and sealed the key
    else:
        if sid not in ctx.logged_pending:
            log.info("study %s (%s): fits local limits; waiting for the hospital admin to approve it in the "
                     "portal (auto_approve is off)", sid, study.name)
            ctx.logged_pending.add(sid)
        ctx.ledger.remember_study(study, invitation_state="pending_admin")
        # Nothing to do until the admin decides; the decision makes other items appear.
        ctx.defer(item, PENDING_INVITATION_RECHECK_S)


def decline(ctx: NodeContext, sid: int, name: str, reason: str) -> None:
    log.info("study %s (%s): declining: %s", sid, name, reason)
    ctx.client.decision(sid, "decline", reason)


def decline_invalid(ctx: NodeContext, item: dict[str, Any], reason: str) -> None:
    """An invitation whose study this node cannot read (another protocol version, a bad field):
    declined with the reason; nothing is stored (there is no study to store)."""
    raw = item["study"]
    decline(ctx, int(raw["id"]), str(raw.get("name", "")), reason)
