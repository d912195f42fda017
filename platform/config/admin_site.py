"""Django admin with the portal's login: the same throttle (per user and address, locks) and the
same audit events (auth.login, auth.login_failed summarised, auth.login_locked) as portal/auth.py.
Installed by config.apps.PlatformAdminConfig, used instead of django.contrib.admin when the portal
is (config/settings.py)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from portal.auth import attempt_login


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    def clean(self):
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is not None and password:
            user, message = attempt_login(self.request, username, password)
            if user is None:
                raise ValidationError(message, code="invalid_login")
            self.user_cache = user
            self.confirm_login_allowed(user)  # staff only, as Django admin's own form
        return self.cleaned_data


class PlatformAdminSite(admin.AdminSite):
    login_form = ThrottledAdminAuthenticationForm
