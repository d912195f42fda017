from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register the Celery tasks in every process (web, worker, tests): services enqueue them by
        # name and do not import the tasks module. Here, not at the top: tasks import the models,
        # which need the app registry.
        from . import tasks  # noqa: F401
