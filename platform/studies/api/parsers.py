"""JSON request bodies (and JSON headers) parsed strictly: only numbers JSON can carry.

Python's json module accepts NaN, Infinity and -Infinity, and turns a literal such as 1e999 into
an infinite float; none of them is JSON, the database's jsonb refuses them and the audit trail
cannot record them. They are answered 422 {"error", "code": "invalid"} naming the value, before
any service sees them.
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any

from rest_framework import exceptions
from rest_framework.parsers import JSONParser, get_encoding


class NonFiniteNumber(exceptions.APIException):
    status_code = 422
    default_code = "invalid"


def _constant(name: str):
    raise NonFiniteNumber(f"{name} is not a JSON number: send finite numbers only (or the value as a string)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"the number {text[:40]} is beyond the range of a 64-bit float: send a finite number")
    return value


def loads_strict(text: str | bytes) -> Any:
    """json.loads that raises NonFiniteNumber (an API error, 422) on NaN, Infinity or an overflowing number."""
    return json.loads(text, parse_constant=_constant, parse_float=_finite_float)


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})
        try:
            return json.load(codecs.getreader(encoding)(stream), parse_constant=_constant, parse_float=_finite_float)
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
