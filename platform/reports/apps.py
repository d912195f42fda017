from django.apps import AppConfig


class ReportsConfig(AppConfig):
    """The study audit report (HTML/PDF), the epsilon recomputation and the audit trail pages."""

    name = "reports"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register the Celery task the studies services enqueue by name (reports.recompute_privacy)
        # in every process; here, not at the top: the tasks module imports the models.
        from . import tasks  # noqa: F401
