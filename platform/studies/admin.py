from django.contrib import admin

from .models import (Aggregate, EncryptedUpdate, FinalModel, HEContext, Participation, PrivacySpend, Round,
                     RoundReport, Study, TrainingJob)


class ReadOnly(admin.ModelAdmin):
    """Raw data for consortium admins; state changes go through the services (and the audit trail)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Study)
class StudyAdmin(ReadOnly):
    list_display = ("name", "consortium", "status", "rounds", "epsilon", "created_at")
    list_filter = ("status",)


for model in (Participation, Round, TrainingJob, EncryptedUpdate, Aggregate, PrivacySpend, RoundReport, FinalModel):
    admin.site.register(model, ReadOnly)


@admin.register(HEContext)
class HEContextAdmin(ReadOnly):
    exclude = ("public_params",)
    list_display = ("study", "codec", "sha256", "created_at")
