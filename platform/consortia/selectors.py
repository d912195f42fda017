"""A user's roles in a consortium. What each role may see and do is decided in studies/access.py."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import Hospital, Membership

Role = Membership.Role


def roles_in(user, consortium_id: int) -> set[str]:
    """The user's roles in one consortium (superusers hold all of them)."""
    if not getattr(user, "is_authenticated", False):
        return set()
    if user.is_superuser:
        return set(Role.values)
    return set(Membership.objects.filter(user=user, consortium_id=consortium_id).values_list("role", flat=True))


def online_hospital_ids(hospital_ids) -> set[int]:
    """Those of ``hospital_ids`` whose node was in contact (heartbeat or work poll) within
    settings.NODE_ONLINE_WINDOW_S."""
    since = timezone.now() - timedelta(seconds=settings.NODE_ONLINE_WINDOW_S)
    return set(Hospital.objects.filter(pk__in=list(hospital_ids), last_heartbeat__gte=since, revoked_at__isnull=True)
               .values_list("pk", flat=True))


def node_reported_limits(hospital) -> dict:
    """The limits the hospital's node reports in its heartbeats (its node.toml [limits]), or {}."""
    status = hospital.node_status if isinstance(hospital.node_status, dict) else {}
    reported = status.get("limits")
    return reported if isinstance(reported, dict) else {}


def study_limit_conflicts(hospitals, *, epsilon: float, delta: float, rounds: int, model_type: str) -> list[str]:
    """Why a study with these settings would be refused by some of ``hospitals``: against the limits
    declared in the portal and, where its node reports them, the node's own (the node enforces
    those whatever the portal says). One sentence per hospital that would refuse; [] if none."""
    out = []
    for h in hospitals:
        node = node_reported_limits(h)
        why = []
        caps = [(h.max_epsilon, "declared"), (node.get("max_epsilon"), "on its node")]
        for cap, where in caps:
            if isinstance(cap, (int, float)) and epsilon > cap:
                why.append(f"ε {epsilon:g} is above its max ε {cap:g} ({where})")
                break
        for cap, where in [(h.max_rounds, "declared"), (node.get("max_rounds"), "on its node")]:
            if isinstance(cap, int) and rounds > cap:
                why.append(f"{rounds} rounds is above its max {cap} ({where})")
                break
        node_delta = node.get("max_delta")
        if isinstance(node_delta, (int, float)) and delta > node_delta:
            why.append(f"δ {delta:g} is above its max δ {node_delta:g} (on its node)")
        for allowed, where in [(h.allowed_models, "declared"), (node.get("allowed_models"), "on its node")]:
            if isinstance(allowed, list) and allowed and model_type not in allowed:
                why.append(f"model {model_type} is not among its allowed models ({', '.join(map(str, allowed))}; {where})")
                break
        if why:
            out.append(f"{h.name}: " + "; ".join(why))
    return out


def limits_summary(hospital) -> str:
    """The hospital's limits in a few words, as a researcher choosing hospitals needs them."""
    node = node_reported_limits(hospital)
    eps = [v for v in (hospital.max_epsilon, node.get("max_epsilon")) if isinstance(v, (int, float))]
    rounds = [v for v in (hospital.max_rounds, node.get("max_rounds")) if isinstance(v, int)]
    parts = [f"max ε {min(eps):g}" if eps else "no ε cap declared"]
    if rounds:
        parts.append(f"≤ {min(rounds)} rounds")
    models = hospital.allowed_models or node.get("allowed_models")
    if isinstance(models, list) and models:
        parts.append("models: " + ", ".join(map(str, models)))
    return " · ".join(parts)
