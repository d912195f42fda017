"""Token authentication: nodes send `Authorization: Token <node token>`, researchers' scripts
`Authorization: Bearer <API token>`; only hashes of either are stored."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions

from consortia.apitokens import api_token_user
from consortia.models import Hospital
from consortia.tokens import token_hash


class _KeywordTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: <keyword> <token>`: the clear token, or None when the header is for another scheme."""

    keyword = ""
    what = ""

    def clear_token(self, request) -> str | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(f"malformed Authorization header: use '{self.keyword} <{self.what}>'")
        try:
            return header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed(f"malformed {self.what}") from None

    def authenticate_header(self, request):
        return self.keyword


class NodeTokenAuthentication(_KeywordTokenAuthentication):
    keyword = "Token"
    what = "node token"

    def authenticate(self, request):
        token = self.clear_token(request)
        if token is None:
            return None
        hospital = Hospital.objects.filter(token_hash=token_hash(token), revoked_at__isnull=True).first()
        if hospital is None:
            raise exceptions.AuthenticationFailed("unknown or revoked node token: re-enrol this node with a new enrolment token")
        return AnonymousUser(), hospital


class IsNode(permissions.BasePermission):
    message = "this endpoint is for enrolled hospital nodes (send 'Authorization: Token <node token>')"

    def has_permission(self, request, view):
        return isinstance(request.auth, Hospital)


class ApiTokenAuthentication(_KeywordTokenAuthentication):
    """A researcher's personal API token: `Authorization: Bearer fpt_...` (created in the portal,
    Account page). The request acts as the token's user, with that user's roles right now."""

    keyword = "Bearer"
    what = "API token"

    def authenticate(self, request):
        clear = self.clear_token(request)
        if clear is None:
            return None
        user = api_token_user(clear)
        if user is None:
            raise exceptions.AuthenticationFailed("unknown, expired or revoked API token: create a new one in the "
                                                  "portal (your account page)")
        return user, None
