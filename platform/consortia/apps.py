from django.apps import AppConfig


class ConsortiaConfig(AppConfig):
    name = "consortia"
    default_auto_field = "django.db.models.BigAutoField"
