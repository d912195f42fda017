from django.contrib import admin

from audit.services import actor_label

from .models import Consortium, EnrolmentToken, Hospital, Membership
from .services import membership_revoke, membership_save


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
    """Roles edited here go through consortia.services: each grant, change and removal is audited
    (the model refuses a hospital of another consortium; the form shows why)."""

    list_display = ("user", "consortium", "role", "hospital")

    def save_model(self, request, obj, form, change):
        membership_save(membership=obj, actor=actor_label(user=request.user))

    def delete_model(self, request, obj):
        membership_revoke(membership=obj, actor=actor_label(user=request.user))

    def delete_queryset(self, request, queryset):
        for m in queryset.select_related("user"):
            membership_revoke(membership=m, actor=actor_label(user=request.user))
