"""Errors shared by both sides. Messages say what is wrong and how to fix it."""


class SpecError(ValueError):
    """A study configuration, data schema or model spec is invalid."""


class CodecError(ValueError):
    """A ciphertext, frame or encryption context is malformed or foreign."""


class PoisonedAggregateError(CodecError):
    """An aggregate does not decrypt to a consistent value under the study key: at least one upload
    was encrypted under another key (or forged). Not an overflow: the platform never adds more than
    max_hospitals uploads. The node reports it; per-upload noise-budget checks name the culprit."""
