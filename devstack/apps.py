from django.apps import AppConfig


class DevstackConfig(AppConfig):
    """Installed only where the package is importable (a checkout, not the production image), so
    `manage.py demo` exists where it can run."""

    name = "devstack"
    verbose_name = "Development stack (demo, local processes)"
