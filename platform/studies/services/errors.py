"""The error a service raises for a request it cannot carry out."""

from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be carried out in the current state. status is the HTTP status to use."""

    def __init__(self, message: str, *, code: str = "invalid", status: int = 409):
        super().__init__(message)
        self.code = code
        self.status = status
