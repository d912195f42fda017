"""The test database's URL for child processes (a copy of tests/conftest.py's helper, which a
sibling conftest cannot import)."""


def db_url_for_children(connection) -> str:
    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    pw = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{user}{pw}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"
