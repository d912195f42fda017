from django.contrib import admin

from .models import Consortium, EnrolmentToken, Hospital, Membership


@admin.register(Consortium)
class ConsortiumAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")


@admin.register(Hospital)
class HospitalAdmin(admin.ModelAdmin):
    list_display = ("name", "consortium", "enrolled_at", "revoked_at", "last_heartbeat", "node_version")
    exclude = ("token_hash",)
    readonly_fields = ("public_key", "enrolled_at", "last_heartbeat", "node_version", "node_status")


@admin.register(EnrolmentToken)
class EnrolmentTokenAdmin(admin.ModelAdmin):
    list_display = ("hospital", "created_at", "expires_at", "used_at")
    exclude = ("token_hash",)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "consortium", "role", "hospital")
