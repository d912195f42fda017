from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register the Celery tasks and the signal receivers in every process (web, worker, tests):
        # services enqueue tasks by name and do not import the tasks module. Here, not at the top:
        # both import the models, which need the app registry.
        from . import receivers, tasks  # noqa: F401
