"""A user's roles in a consortium. What each role may see and do is decided in studies/access.py."""

from __future__ import annotations

from .models import Membership

Role = Membership.Role


def roles_in(user, consortium_id: int) -> set[str]:
    """The user's roles in one consortium (superusers hold all of them)."""
    if not getattr(user, "is_authenticated", False):
        return set()
    if user.is_superuser:
        return set(Role.values)
    return set(Membership.objects.filter(user=user, consortium_id=consortium_id).values_list("role", flat=True))
