from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from studies.api.urls import node_urls, researcher_urls

from .health import health
from .schema import SchemaView

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
