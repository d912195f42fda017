"""Node token authentication: `Authorization: Token <node token>`; only hashes are stored."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions

from consortia.models import Hospital
from consortia.tokens import token_hash


class NodeTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("malformed Authorization header: use 'Token <node token>'")
        try:
            token = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("malformed node token") from None
        hospital = Hospital.objects.filter(token_hash=token_hash(token), revoked_at__isnull=True).first()
        if hospital is None:
            raise exceptions.AuthenticationFailed("unknown or revoked node token: re-enrol this node with a new enrolment token")
        return AnonymousUser(), hospital

    def authenticate_header(self, request):
        return self.keyword


class IsNode(permissions.BasePermission):
    message = "this endpoint is for enrolled hospital nodes (send 'Authorization: Token <node token>')"

    def has_permission(self, request, view):
        return isinstance(request.auth, Hospital)
