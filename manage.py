#!/usr/bin/env python
"""Django's command-line utility. platform/ is the source root (it has no __init__.py)."""

import os
import sys
from pathlib import Path


def main() -> None:
    repo = Path(__file__).resolve().parent
    sys.path.insert(0, str(repo / "platform"))
    sys.path.insert(1, str(repo))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:  # a bad environment variable (config/env.py): its message says it all
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
