"""The platform's URLs plus one API view that fails, to prove unhandled exceptions answer JSON."""

from django.urls import path
from rest_framework.decorators import api_view, authentication_classes, permission_classes

from config.urls import handler400, handler403, handler404, handler500  # noqa: F401
from config.urls import urlpatterns as platform_urls


@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def boom(request):
    raise RuntimeError("an unhandled bug")


def plain_boom(request):
    raise RuntimeError("an unhandled bug outside DRF")


urlpatterns = [path("api/boom", boom), path("api/plain-boom", plain_boom), path("plain-boom", plain_boom),
               *platform_urls]
