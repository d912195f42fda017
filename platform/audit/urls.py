"""Audit views (study audit report HTML/PDF, trail). Filled in by the audit work (issue 4)."""

urlpatterns: list = []
