"""Errors shared by both sides. Messages say what is wrong and how to fix it."""


class SpecError(ValueError):
    """A study configuration, data schema or model spec is invalid."""


class CodecError(ValueError):
    """A ciphertext, frame or encryption context is malformed or foreign."""
