"""Django admin whose site is config.admin_site.PlatformAdminSite (the portal's throttled, audited
login). This module imports no models: Django loads it while it populates the app registry."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class PlatformAdminConfig(AdminConfig):
    default_site = "config.admin_site.PlatformAdminSite"
