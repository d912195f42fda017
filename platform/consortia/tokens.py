"""Secrets handed out once (node tokens, enrolment tokens); only their hashes are stored."""

import hashlib
import secrets


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    # Tokens are 256-bit random values, so a plain SHA-256 is not brute-forceable.
    return hashlib.sha256(token.encode()).hexdigest()
