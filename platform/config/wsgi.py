import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# The web server's PostgreSQL connections come from a pool (see config/settings.py). This is the
# one environment variable written outside config/settings.py, and it has to be: the pool is a
# property of *this process* (the web server), not of the deployment, so only the WSGI entry
# point knows to turn it on, and it must be in the environment before the settings load. It is
# removed again right after, so processes this one starts (and processes that import this module
# after their settings are loaded, like a test live server) keep plain connections: a pool must
# not cross a fork into Celery workers. An explicit FEDPLATFORM_DB_POOL (e.g. 0) wins and stays.
_pool_switch = "FEDPLATFORM_DB_POOL" not in os.environ
os.environ.setdefault("FEDPLATFORM_DB_POOL", "1")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
if _pool_switch:
    os.environ.pop("FEDPLATFORM_DB_POOL", None)

from django.conf import settings  # noqa: E402

if not settings.CELERY_TASK_ALWAYS_EAGER:
    import threading

    from config.celery import warm_publisher  # noqa: E402

    threading.Thread(target=warm_publisher, name="warm-broker", daemon=True).start()
