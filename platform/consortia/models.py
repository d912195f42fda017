"""Consortia, hospitals (node identities), enrolment tokens and user roles."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class Consortium(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Hospital(models.Model):
    """A hospital and the identity of its node daemon."""

    consortium = models.ForeignKey(Consortium, on_delete=models.PROTECT, related_name="hospitals")
    name = models.CharField(max_length=200)
    # X25519 public key of the node (base64), used by key custodians to seal the study secret.
    public_key = models.CharField(max_length=64, blank=True)
    # SHA-256 of the node API token; the token itself is shown once at enrolment, never stored.
    token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    enrolled_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    node_version = models.CharField(max_length=64, blank=True)
    node_status = models.JSONField(default=dict, blank=True)
    # The hospital's own limits, as declared in the portal (the node enforces its own config too).
    max_epsilon = models.FloatField(null=True, blank=True)
    allowed_models = models.JSONField(default=list, blank=True)
    max_rounds = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["consortium", "name"], name="hospital_name_unique")]
        ordering = ["consortium_id", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_enrolled(self) -> bool:
        return bool(self.token_hash) and self.revoked_at is None


class EnrolmentToken(models.Model):
    """A one-time token a hospital admin pastes into `python -m hospital_node enrol`."""

    hospital = models.ForeignKey(Hospital, on_delete=models.CASCADE, related_name="enrolment_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    @property
    def state(self) -> str:
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= timezone.now() else "unused"


class Membership(models.Model):
    """A user's role in a consortium. Hospital admins are bound to one hospital."""

    class Role(models.TextChoices):
        CONSORTIUM_ADMIN = "consortium_admin", "Consortium admin"
        RESEARCHER = "researcher", "Researcher"
        HOSPITAL_ADMIN = "hospital_admin", "Hospital admin"
        AUDITOR = "auditor", "Auditor"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    consortium = models.ForeignKey(Consortium, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=32, choices=Role.choices)
    hospital = models.ForeignKey(Hospital, null=True, blank=True, on_delete=models.CASCADE, related_name="admins")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "consortium", "role", "hospital"], name="membership_unique"),
            models.CheckConstraint(
                condition=(models.Q(role="hospital_admin", hospital__isnull=False)
                           | (~models.Q(role="hospital_admin") & models.Q(hospital__isnull=True))),
                name="membership_hospital_iff_hospital_admin"),
        ]

    def clean(self) -> None:
        super().clean()
        self.check_hospital_in_consortium()

    def check_hospital_in_consortium(self) -> None:
        """A hospital admin acts for a hospital of the same consortium only (a cross-consortium
        grant would let a user decide for another consortium's hospital)."""
        if self.hospital_id is not None and self.consortium_id is not None:
            hospital_consortium = Hospital.objects.filter(pk=self.hospital_id).values_list("consortium_id", flat=True).first()
            if hospital_consortium != self.consortium_id:
                raise ValidationError({"hospital": "this hospital belongs to another consortium: a hospital-admin role is "
                                                   "granted in the hospital's own consortium"})

    def save(self, *args, **kwargs) -> None:
        # Every code path (services, Django admin, shell) goes through this check.
        self.check_hospital_in_consortium()
        super().save(*args, **kwargs)


class PasswordLink(models.Model):
    """A one-time link that sets a user's password: sent with an invitation, or asked for on the
    'forgot your password' page. Only the SHA-256 of its token is stored; it expires and is used once."""

    class Purpose(models.TextChoices):
        INVITATION = "invitation", "Invitation"
        RESET = "reset", "Password reset"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="password_links")
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    consortium = models.ForeignKey(Consortium, null=True, blank=True, on_delete=models.CASCADE)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)


class ApiToken(models.Model):
    """A personal token for the researcher REST API (`Authorization: Bearer fpt_...`). It acts as
    its user, with the user's roles at the time of each request; only its SHA-256 is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)  # the first characters, to recognise a token in a list
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at is not None and self.expires_at <= timezone.now() else "active"
