"""Study services (being split by sub-domain): every public name stays importable from here."""

from .lifecycle import *  # noqa: F401,F403
from .lifecycle import ServiceError  # noqa: F401
