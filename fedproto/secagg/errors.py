"""The one error type of the secure-aggregation library."""


class SecAggError(ValueError):
    """A secure-aggregation message, parameter or state is invalid; the message says how to fix it."""
