import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# The web server's PostgreSQL connections come from a pool (see config/settings.py). The switch is
# read while settings load and then removed, so processes this one starts (and processes that
# import this module after their settings are loaded, like a test live server) keep plain
# connections: a pool must not cross a fork into Celery workers.
_pool_switch = "FEDPLATFORM_DB_POOL" not in os.environ
os.environ.setdefault("FEDPLATFORM_DB_POOL", "1")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
if _pool_switch:
    os.environ.pop("FEDPLATFORM_DB_POOL", None)

if os.environ.get("CELERY_TASK_ALWAYS_EAGER", "0") != "1":
    import threading

    from config.celery import warm_publisher  # noqa: E402

    threading.Thread(target=warm_publisher, name="warm-broker", daemon=True).start()
