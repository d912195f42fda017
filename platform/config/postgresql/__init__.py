"""PostgreSQL backend of the web process: Django's, with a pool that recovers at once (see base.py)."""
