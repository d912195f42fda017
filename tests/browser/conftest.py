"""Browser tests: Playwright's sync API runs an asyncio loop in the test thread; the test's own ORM
calls are plain synchronous calls in that thread, so Django's async-safety guard is lifted here."""

import os

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
