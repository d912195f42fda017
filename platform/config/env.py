"""Typed readers for the environment variables that configure the platform (config/settings.py).

Each returns the variable's value converted and checked, or the default when the variable is unset
or empty. A bad value stops the process at start-up with ImproperlyConfigured naming the variable
and what it accepts, instead of surfacing later as a crash in a request or a task (after
Healthchecks' hc/settings.py envbool/envint). Values marked secret are never echoed.
"""

from __future__ import annotations

import math
import os
import re

from django.core.exceptions import ImproperlyConfigured

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def _raw(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _bad(name: str, value: str, accepts: str, default, *, secret: bool = False) -> ImproperlyConfigured:
    shown = "(value hidden)" if secret else repr(value)
    return ImproperlyConfigured(f"environment variable {name}={shown} is not valid: {accepts} "
                                f"(default {default!r} when unset). Fix or unset {name}.")


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" of at least {lo}"
    if hi is not None:
        return f" of at most {hi}"
    return ""


def envstr(name: str, default: str = "", *, choices: tuple[str, ...] | None = None, pattern: str | None = None,
           accepts: str = "", secret: bool = False) -> str:
    """A string; with `choices` one of them (compared case-insensitively, returned as listed), with
    `pattern` a full match of that regular expression (`accepts` says in words what it is)."""
    value = _raw(name)
    if value is None:
        return default
    if choices is not None:
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise _bad(name, value, f"expected one of {', '.join(choices)}", default, secret=secret)
    if pattern is not None and not re.fullmatch(pattern, value):
        raise _bad(name, value, f"expected {accepts or 'a match of ' + pattern}", default, secret=secret)
    return value


def envbool(name: str, default: bool) -> bool:
    """1/true/yes/on or 0/false/no/off (any case)."""
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise _bad(name, value, "expected 1 or 0 (also true/false, yes/no, on/off)", "1" if default else "0")


def _number(name: str, default, parse, what: str, lo, hi):
    """``parse`` the variable (int or float) and check it is finite and within [lo, hi]."""
    value = _raw(name)
    if value is None:
        return default
    accepts = f"expected {what}{_range(lo, hi)}"
    try:
        number = parse(value)
    except ValueError:
        raise _bad(name, value, accepts, default) from None
    if not math.isfinite(number) or (lo is not None and number < lo) or (hi is not None and number > hi):
        raise _bad(name, value, accepts, default)
    return number


def envint(name: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number (underscores allowed: 2_000_000) within [lo, hi]."""
    return _number(name, default, int, "a whole number", lo, hi)


def envfloat(name: str, default: float, *, lo: float | None = None, hi: float | None = None) -> float:
    """A finite number within [lo, hi]."""
    return _number(name, default, float, "a number", lo, hi)


def envlist(name: str, default: list[str], *, item_pattern: str | None = None, accepts: str = "") -> list[str]:
    """A comma-separated list (blank items dropped); with `item_pattern` every item must match it."""
    value = _raw(name)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",") if item.strip()]
    if item_pattern is not None:
        for item in items:
            if not re.fullmatch(item_pattern, item):
                raise _bad(name, value, f"{item!r} is not {accepts or 'a match of ' + item_pattern}", ",".join(default))
    return items
