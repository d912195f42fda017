"""Fixtures of tests/audit; they live in audit_support.py so tests can import its helpers by a unique name."""

from audit_support import *  # noqa: F401,F403
