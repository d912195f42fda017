"""The privacy model a study runs under, in one line for the audit report and the recomputation.

Local DP: every hospital's update is DP on its own. Distributed DP: the epsilon is recomputed here
from the study definition alone (fedproto.ddp_config.noise_plan: the same pure function the nodes
plan with), for Q - T honest noise shares per released sum, with T the collusion threshold.
"""

from __future__ import annotations

from typing import Any

from fedproto import ddp_config
from fedproto.errors import SpecError
from studies.models import Study
from studies.selectors import study_definition


def privacy_model(study: Study) -> dict[str, Any]:
    """fedproto.ddp_config.statement of the stored study (an unplannable one says why)."""
    try:
        return ddp_config.statement(study_definition(study))
    except SpecError as exc:
        return {"privacy_model": study.privacy_mode, "collusion": study.collusion, "epsilon": None,
                "guarantee": f"no noise plan: {exc}"}


def privacy_model_line(study: Study) -> str:
    s = privacy_model(study)
    if s["privacy_model"] == "local":
        return "local DP: each hospital adds the full noise; its update is DP on its own against any coalition"
    eps = "n/a" if s.get("epsilon") is None else f"{s['epsilon']:.4g}"
    return (f"distributed DP (secure aggregation): collusion threshold T = {s['collusion']}, quorum Q = {study.quorum}, "
            f"epsilon {eps} per hospital for the released sums; {s['guarantee']}")
