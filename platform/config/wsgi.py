import os
import sys
from pathlib import Path

# platform/ is a plain source root (no __init__.py, see DESIGN.md); the repo root holds fedproto/.
_here = Path(__file__).resolve().parent.parent
for p in (str(_here), str(_here.parent)):
    if p not in sys.path:
        sys.path.insert(0, p)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

if os.environ.get("CELERY_TASK_ALWAYS_EAGER", "0") != "1":
    import threading

    from config.celery import warm_publisher  # noqa: E402

    threading.Thread(target=warm_publisher, name="warm-broker", daemon=True).start()
