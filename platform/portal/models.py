"""Portal-only state: login throttling (a DB table, so every web process shares it)."""

from __future__ import annotations

from django.db import models


class LoginThrottle(models.Model):
    """Failed logins for one key (username + client IP). Locked while locked_until is in the future."""

    key = models.CharField(max_length=300, unique=True)
    failures = models.PositiveIntegerField(default=0)
    window_start = models.DateTimeField()
    locked_until = models.DateTimeField(null=True, blank=True)
