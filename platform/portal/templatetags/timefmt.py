"""Times as the portal shows them: ISO timestamps from the API's dicts, and durations."""

from __future__ import annotations

from datetime import datetime

from django import template

register = template.Library()


@register.filter
def iso_utc(value) -> str:
    """'2026-12-06T03:04:05.123+00:00' -> '2026-12-06 03:04 UTC' ('—' when empty or unreadable)."""
    if not value:
        return "—"
    try:
        dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return "—"
    return dt.strftime("%Y-%m-%d %H:%M UTC")


@register.filter
def duration(seconds) -> str:
    """Seconds as the two largest units: '3 d 4 h', '5 h 12 min', '4 min 10 s', '9 s'."""
    try:
        s = max(0, int(seconds))
    except (TypeError, ValueError):
        return "—"
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    if m:
        return f"{m} min {sec} s"
    return f"{sec} s"
