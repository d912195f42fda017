from django.apps import AppConfig


class ReportsConfig(AppConfig):
    """The study audit report (HTML/PDF), the epsilon recomputation and the audit trail pages."""

    name = "reports"
    default_auto_field = "django.db.models.BigAutoField"
