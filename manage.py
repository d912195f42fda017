#!/usr/bin/env python
"""Django's command-line utility.

platform/ is the platform's source root (no __init__.py: `platform` is a standard-library module);
`make install` installs it and the repository's packages in editable mode (pyproject.toml and
platform/pyproject.toml), so nothing here edits sys.path.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:  # a bad environment variable (config/env.py): its message says it all
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
