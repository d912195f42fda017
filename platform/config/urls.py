from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from studies.api.urls import node_urls, researcher_urls

from .health import health
from .schema import SchemaView

# /api/ paths answer the protocol's JSON error; everything else Django's pages (config/apierrors.py).
handler400 = "config.apierrors.bad_request"
handler403 = "config.apierrors.permission_denied"
handler404 = "config.apierrors.page_not_found"
handler500 = "config.apierrors.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/health/", health, name="health"),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/node/", include(node_urls)),
    path("api/", include(researcher_urls)),
    path("audit/", include("reports.urls")),
]
if "portal" in settings.INSTALLED_APPS:
    urlpatterns.append(path("", include("portal.urls")))
