"""Number formatting for the audit report, and a safe CSS string for @page margin boxes."""

from __future__ import annotations

from django import template
from django.utils.safestring import mark_safe

from consortia.people import actor_display, display_name

register = template.Library()


@register.filter
def f4(value) -> str:
    """Four significant digits (epsilons, noise multipliers, sampling rates)."""
    if value is None or value == "":
        return "—"
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def g(value) -> str:
    if value is None or value == "":
        return "—"
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def css_string(value) -> str:
    """Escape text for use inside a double-quoted CSS string in a <style> element."""
    out = []
    for ch in str(value):
        if ch in '\\"<>&' or ord(ch) < 32:
            out.append(f"\\{ord(ch):x} ")
        else:
            out.append(ch)
    return mark_safe("".join(out))


@register.filter
def actor(value) -> str:
    """'user:3:alice' -> the person's display name ('Alice Martin'), 'node:5:Hospital B' -> 'Hospital B (node)';
    others unchanged (consortia.people.actor_display)."""
    return actor_display(str(value)) if value else "—"


@register.filter
def person(user) -> str:
    """A user as shown: full name, else username."""
    return display_name(user)
