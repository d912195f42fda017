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
    # `data_canonical` is the record: the canonical JSON text of the event's data, hashed and exported
    # byte for byte (see chain.py for why jsonb cannot be). `data` is a jsonb copy for queries and
    # display; verification checks it still says the same. Events written before migration 0003
    # have no data_canonical: they were hashed over the canonical JSON of `data` (chain.legacy_data_text).
    data = models.JSONField(default=dict, blank=True)
    data_canonical = models.TextField(null=True, blank=True, editable=False)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["stream", "seq"], name="audit_stream_seq_unique")]
        indexes = [models.Index(fields=["stream", "seq"])]
        ordering = ["stream", "seq"]

    def __str__(self) -> str:
        return f"{self.stream}#{self.seq} {self.action}"


class AuditTally(models.Model):
    """Repeats of one kind of event (a failed login for one user, a refused enrolment with one
    token) counted instead of recorded one by one, so an attacker cannot flood the append-only
    trail. The first repeat of a window is recorded as is; the rest are written as one summary
    event (data "count") when the window closes or flush_summary() is called (see repeated.py)."""

    key = models.CharField(max_length=300, primary_key=True)
    window_end = models.DateTimeField(null=True, blank=True)  # None: no open window
    count = models.PositiveIntegerField(default=0)            # repeats since the recorded one, not yet written
    first_at = models.DateTimeField(null=True, blank=True)    # of the counted repeats
    last_at = models.DateTimeField(null=True, blank=True)
    # The summary to write, as canonical JSON text (exact, unlike jsonb): {"event": the last counted
    # repeat's fields and data, "distinct": {data field: its distinct values, up to 20}}.
    pending = models.TextField(blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["window_end"], name="audit_tally_window_end")]

    def __str__(self) -> str:
        return f"{self.key}: {self.count} pending"
