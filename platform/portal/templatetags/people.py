"""How people are named on the portal's pages: display names, never internal labels."""

from django import template

from consortia.people import actor_display, display_name

register = template.Library()


@register.filter
def person(user) -> str:
    """A user as shown: full name, else username ('—' for none)."""
    return display_name(user)


@register.filter
def actor(label) -> str:
    """An audit actor label (user:4:hana, node:2:Alpha Hospital) as shown: the person's name, the hospital's node."""
    return actor_display(label) if label else "—"
