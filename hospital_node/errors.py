"""Errors of the node. Messages say what is wrong and how to fix it."""

from fedproto.errors import SpecError


class NodeError(Exception):
    """Base class of the node's own errors."""


class ConfigError(NodeError):
    """The node configuration file is invalid (CLI exit code 2)."""


class DataError(NodeError):
    """The local data does not match the study's schema.

    str(error) is the whole story for the data manager (file path, row, the offending cell value) and
    stays in the node's log. ``public`` names only the column and the kind of problem: it is what the
    node may send to the platform (a decline or refusal reason that the consortium and the permanent
    audit trail read), so it never carries a local path or a patient's value."""

    def __init__(self, message: str, *, public: str):
        super().__init__(message)
        self.public = public


class StatisticsUnusable(DataError):
    """The decrypted federated statistics cannot be used (not finite, out of range, or mostly
    noise): the study cannot prepare its data; its training jobs are refused with code
    ``statistics_unusable`` (hospital_node/statistics_round.py)."""


class MissingDataset(DataError):
    """The study names a data set this node's config does not have. Its public part names the data
    set only (never the config's path or the data sets the node does have)."""

    def __init__(self, message: str, *, name: str):
        super().__init__(message, public=f"this node has no data set {name!r} (the study uses it; the hospital's "
                                         "node config does not name it)")
        self.name = name


class FatalAuthError(NodeError):
    """The platform answered 401/403: the token is bad or revoked. Stop, do not retry."""


class TransientError(NodeError):
    """Network error or 5xx: retry with backoff."""


class ApiError(NodeError):
    """A 4xx answer other than 401/403, with the platform's error body."""

    def __init__(self, status: int, code: str, message: str, method: str = "", path: str = ""):
        self.status, self.code, self.message = status, code, message
        super().__init__(f"{method} {path} -> {status} {code}: {message}".strip())


class BudgetExceeded(NodeError):
    """Training this job would exceed the study budget or the hospital's cap."""


def public_reason(exc: BaseException) -> str:
    """What a node may tell the platform about a local failure: the public part of a DataError, a
    SpecError's message (it is about the study, not the local data), and for anything else only the
    kind of error (its message may hold a local path); the whole error goes to the node's log."""
    if isinstance(exc, DataError):
        return exc.public
    if isinstance(exc, SpecError):
        return str(exc)
    return f"{type(exc).__name__} on the node: details are in the node's log"
