"""Studies, participations, rounds, jobs and what hospitals send (all encrypted or public)."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from consortia.models import Consortium, Hospital
from fedproto.datasets import DEFAULT_DATASETS
from fedproto.evaluation import DEFAULT_EVALUATION


def default_evaluation() -> dict:
    return dict(DEFAULT_EVALUATION)


def default_datasets() -> dict:
    return dict(DEFAULT_DATASETS)


class Study(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        RECRUITING = "recruiting"
        RUNNING = "running"
        PAUSED = "paused"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    consortium = models.ForeignKey(Consortium, on_delete=models.PROTECT, related_name="studies")
    name = models.CharField(max_length=200)
    purpose = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="owned_studies")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    status_reason = models.TextField(blank=True)
    schema = models.JSONField()
    model_spec = models.JSONField()
    rounds = models.PositiveIntegerField()
    local_epochs = models.PositiveIntegerField()
    batch_size = models.PositiveIntegerField()
    learning_rate = models.FloatField()
    epsilon = models.FloatField()
    delta = models.FloatField()
    clip_norm = models.FloatField()
    accountant = models.CharField(max_length=16, default="rdp")
    # fedproto/privacy.py: "local" (each hospital adds all the noise) or "distributed" (secure
    # aggregation; the guarantee holds while at most ``collusion`` hospitals collude with the platform)
    privacy_mode = models.CharField(max_length=16, default="local")
    collusion = models.PositiveIntegerField(default=0)
    quant_step = models.FloatField(default=0.0)
    encryption = models.JSONField()
    quorum = models.PositiveIntegerField()
    round_deadline_s = models.PositiveIntegerField()
    # Recruitment closes this long after it opens (services/recruitment_deadline.py): the study then
    # starts with the hospitals that hold its key, if they reach the quorum, or fails naming whom it
    # waited for. The deadline moves on by any time the platform itself was away.
    recruitment_window_s = models.PositiveIntegerField(default=7 * 24 * 3600)
    recruitment_deadline = models.DateTimeField(null=True, blank=True)
    max_round_attempts = models.PositiveIntegerField(default=2)
    seed = models.BigIntegerField()
    # each hospital's held-out share and local-only baseline (fedproto.evaluation)
    evaluation = models.JSONField(default=default_evaluation)
    # which data set of each hospital's node the study uses (fedproto.datasets; names, never paths)
    datasets = models.JSONField(default=default_datasets)
    custodian = models.ForeignKey(Hospital, null=True, blank=True, on_delete=models.PROTECT, related_name="custodian_of")
    n_params = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A blocked final-model release (hospitals attested different models) resolved by a consortium
    # admin: each resolution counts (it renews the custodian's upload item); an override releases
    # with the disagreement on record.
    release_resolutions = models.PositiveIntegerField(default=0)
    release_override_at = models.DateTimeField(null=True, blank=True)
    release_override_by = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["consortium", "name"], name="study_name_unique")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class Participation(models.Model):
    class State(models.TextChoices):
        INVITED = "invited"
        APPROVED = "approved"
        DECLINED = "declined"
        WITHDRAWN = "withdrawn"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="participations")
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="participations")
    state = models.CharField(max_length=16, choices=State.choices, default=State.INVITED)
    decided_by = models.CharField(max_length=200, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    approved_order = models.PositiveIntegerField(null=True, blank=True)
    key_acked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "hospital"], name="participation_unique")]
        ordering = ["study_id", "hospital__name"]


class HEContext(models.Model):
    """The public part of the study's encryption context: parameters only, never a key."""

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="he_context")
    codec = models.CharField(max_length=32)
    public_params = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    published_by = models.ForeignKey(Hospital, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)


class SealedKey(models.Model):
    """The study secret sealed to one node's public key; the platform cannot open it."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="sealed_keys")
    recipient = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="sealed_keys")
    sealed = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)
    fetched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "recipient"], name="sealed_key_unique")]


class Round(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        COLLECTING = "collecting"
        AGGREGATING = "aggregating"
        DONE = "done"
        FAILED = "failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="round_set")
    number = models.PositiveIntegerField()
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    status_reason = models.TextField(blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(auto_now_add=True)
    collecting_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    n_updates = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "number", "attempt"], name="round_unique")]
        ordering = ["study_id", "number", "attempt"]


class TrainingJob(models.Model):
    class Status(models.TextChoices):
        DISPATCHED = "dispatched"
        UPLOADED = "uploaded"
        REFUSED = "refused"
        EXPIRED = "expired"

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="jobs")
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="jobs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DISPATCHED)
    reason = models.TextField(blank=True)
    reason_code = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "hospital"], name="job_unique")]


class EncryptedUpdate(models.Model):
    job = models.OneToOneField(TrainingJob, on_delete=models.CASCADE, related_name="update")
    path = models.CharField(max_length=500)            # relative to MEDIA_ROOT
    n_parts = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    # Chunk index for aggregation across workers: [[first_part, n_parts, byte_offset, n_bytes, sha256], ...]
    chunks = models.JSONField(default=list, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)


class Aggregate(models.Model):
    round = models.OneToOneField(Round, on_delete=models.CASCADE, related_name="aggregate")
    path = models.CharField(max_length=500)
    n_parts = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    n_contributors = models.PositiveIntegerField()
    contributors = models.JSONField(default=list)     # hospital ids (public: who uploaded)
    seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)


class AggregateChunk(models.Model):
    """The sum of one range of ciphertext parts over a round's uploads (one Celery task each);
    the last chunk to finish assembles the round's Aggregate."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="aggregate_chunks")
    index = models.PositiveIntegerField()
    path = models.CharField(max_length=500)
    n_parts = models.PositiveIntegerField()
    seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "index"], name="aggregate_chunk_unique")]


class PrivacySpend(models.Model):
    """What a node's accountant says after a job, with the inputs an auditor needs to recompute it."""

    job = models.OneToOneField(TrainingJob, on_delete=models.CASCADE, related_name="privacy_spend")
    epsilon = models.FloatField()            # cumulative for this hospital in this study
    epsilon_round = models.FloatField(null=True, blank=True)
    delta = models.FloatField()
    noise_multiplier = models.FloatField()
    sample_rate = models.FloatField()
    steps = models.PositiveIntegerField()
    clip_norm = models.FloatField()
    accountant = models.CharField(max_length=32)
    accountant_version = models.CharField(max_length=32)
    # the node's DP-SGD engine ("fused", or an Opacus grad-sample mode); "" = not reported (older node)
    dp_engine = models.CharField(max_length=32, blank=True, default="")
    # reported after the round stopped waiting for the job (its update, if any, is not aggregated)
    late = models.BooleanField(default=False)
    # a retry attempt that re-sends the update of this earlier job of the same round (no new cost)
    reuses_job = models.ForeignKey(TrainingJob, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    reported_at = models.DateTimeField(auto_now_add=True)


class RoundReport(models.Model):
    """A node's evaluation of the decrypted global model of a round, and its attestation."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="reports")
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="round_reports")
    metrics = models.JSONField(default=dict)
    n_test = models.PositiveIntegerField(default=0)
    model_sha256 = models.CharField(max_length=64)
    epsilon_spent = models.FloatField(null=True, blank=True)
    # the final round only: the hospital's local-only baseline on the same held-out rows (metrics,
    # n_train, n_test, and the (sigma, q, steps) its epsilon is recomputed from); null: none
    local_only = models.JSONField(null=True, blank=True)
    # the statistics round (round 0) only: the global statistics the hospital derived from the
    # decrypted sum ({"statistics": fedproto.statistics.derive(...), "sha256": its preprocessing
    # document's}); its model_sha256 is that document's hash, equal at every hospital that agrees
    preprocessing = models.JSONField(null=True, blank=True)
    reported_at = models.DateTimeField(auto_now_add=True)
    # Set when a consortium admin had the round evaluated again: the report is kept, not counted.
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "hospital"], condition=models.Q(superseded_at__isnull=True),
                                               name="round_report_unique")]


class FinalModel(models.Model):
    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="final_model")
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    uploaded_by = models.ForeignKey(Hospital, on_delete=models.PROTECT)
    round_number = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class PlatformHeartbeat(models.Model):
    """One row, beaten by every reconciler run: a long gap since the last beat means the platform
    itself was down (its database unreachable, no worker), and round deadlines are extended by it
    (studies/tasks.py reconcile, services/rounds.py)."""

    beat_at = models.DateTimeField()
    resumed_at = models.DateTimeField(null=True, blank=True)  # the end of the last such gap


class SecAggRound(models.Model):
    """The platform's state of one distributed-DP round's secure-aggregation exchange
    (fedproto.secagg.RoundCoordinator, rebuilt from these rows on every stage request). Holds only
    what the platform may see: mask public keys and commitments, sealed shares it cannot open, the
    survivor sets, the survivors' unmask shares and the correction vector (never a seed of a
    survivor's pairwise masks, never an update)."""

    round = models.OneToOneField(Round, on_delete=models.CASCADE, related_name="secagg")
    setup = models.JSONField()                          # RoundSetup.to_dict()
    adverts = models.JSONField(default=dict)            # hospital id (str) -> KeyAdvert.to_dict()
    u0 = models.JSONField(null=True, blank=True)        # fixed with the key directory
    bundles = models.JSONField(default=dict)            # sender id (str) -> ShareBundle.to_dict()
    u1 = models.JSONField(null=True, blank=True)        # fixed with the first inbox
    u2 = models.JSONField(null=True, blank=True)        # fixed when the round closes (who uploaded)
    responses = models.JSONField(default=dict)          # sender id (str) -> UnmaskResponse.to_dict()
    correction_path = models.CharField(max_length=500, blank=True)  # uint64 little endian, relative to MEDIA_ROOT
    correction_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    u0_at = models.DateTimeField(null=True, blank=True)
    u1_at = models.DateTimeField(null=True, blank=True)
    u2_at = models.DateTimeField(null=True, blank=True)
    unmasked_at = models.DateTimeField(null=True, blank=True)
