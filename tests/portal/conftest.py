"""Fixtures of tests/portal; they live in portal_support.py so tests can import its helpers by a unique name."""

from portal_support import *  # noqa: F401,F403
