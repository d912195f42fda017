"""Show a fresh secret once, after a redirect (POST-redirect-GET).

The page that creates a secret (an enrolment token, an API token) redirects to a page that shows
it: reloading that page must neither mint a second secret nor show the first one again. Between
the two requests the secret waits in the user's session, encrypted with a key derived from
SECRET_KEY (sessions live in the database, which never holds a secret in the clear), and the first
view takes it out.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

SESSION_KEY = "portal_reveal"
MAX_AGE_S = 300  # a secret not viewed within five minutes is gone


def _fernet() -> Fernet:
    key = hashlib.sha256(b"portal.reveal|" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def stash(request, kind: str, secret: str) -> str:
    """Keep ``secret`` for one viewing; returns the key the redirect carries."""
    key = secrets.token_urlsafe(12)
    box = request.session.get(SESSION_KEY, {})
    box = {k: v for k, v in box.items() if v.get("kind") == kind}  # one secret waiting per kind at most
    box[key] = {"kind": kind, "data": _fernet().encrypt(secret.encode()).decode()}
    request.session[SESSION_KEY] = box
    return key


def take(request, kind: str, key: str) -> str | None:
    """The secret stashed under ``key`` (once), or None: already shown, expired, or not this user's."""
    box = request.session.get(SESSION_KEY, {})
    item = box.pop(key, None) if key else None
    request.session[SESSION_KEY] = box
    if not item or item.get("kind") != kind:
        return None
    try:
        return _fernet().decrypt(item["data"].encode(), ttl=MAX_AGE_S).decode()
    except (InvalidToken, KeyError, TypeError):
        return None
