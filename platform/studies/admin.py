from django.contrib import admin

from audit.admin import ReadOnlyAdmin as ReadOnly

from .models import (
    Aggregate,
    EncryptedUpdate,
    FinalModel,
    HEContext,
    Participation,
    PrivacySpend,
    Round,
    RoundReport,
    Study,
    TrainingJob,
)


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
