"""Append-only audit events, hash-chained per stream (one stream per study, one for the platform)."""

from django.db import models


class AuditHead(models.Model):
    """The latest event of each stream; locked (SELECT FOR UPDATE) to serialise appends."""

    stream = models.CharField(max_length=64, primary_key=True)
    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)


class AuditEvent(models.Model):
    stream = models.CharField(max_length=64)
    seq = models.PositiveBigIntegerField()
    created_at = models.DateTimeField()
    actor = models.CharField(max_length=200)          # "user:alice", "node:3", "system"
    action = models.CharField(max_length=64)          # e.g. "study.created", "update.rejected"
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    consortium_id = models.BigIntegerField(null=True, blank=True)
    study_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    hospital_id = models.BigIntegerField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["stream", "seq"], name="audit_stream_seq_unique")]
        indexes = [models.Index(fields=["stream", "seq"])]
        ordering = ["stream", "seq"]

    def __str__(self) -> str:
        return f"{self.stream}#{self.seq} {self.action}"
