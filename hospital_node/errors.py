"""Errors of the node. Messages say what is wrong and how to fix it."""


class NodeError(Exception):
    """Base class of the node's own errors."""


class ConfigError(NodeError):
    """The node configuration file is invalid (CLI exit code 2)."""


class DataError(NodeError):
    """The local data does not match the study's schema."""


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
