"""What the reports app keeps: the privacy recomputation of each study, so the audit report does
not rebuild every hospital's accountant on each view (reports/privacy_cache.py)."""

from django.db import models

from studies.models import Study


class PrivacyRecomputation(models.Model):
    """The epsilon recomputation of a study (epsilon_check.recompute_study) as of the inputs whose
    SHA-256 it names: every privacy spend of the study with its accountant inputs, the study's
    budget, delta, clip norm and accountant, each hospital's own cap and the Opacus version. It is
    used only while those inputs hash the same; any change makes the next read recompute it."""

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="privacy_recomputation")
    inputs_sha256 = models.CharField(max_length=64)
    n_spends = models.PositiveIntegerField(default=0)
    # JSON text, not jsonb: an accountant can answer Infinity, which jsonb cannot hold.
    result_json = models.TextField()
    # Accountant evaluations already paid for (epsilon_check.Accountants.memo), reused next time.
    memo_json = models.TextField(default="{}")
    computed_at = models.DateTimeField()
    seconds = models.FloatField(default=0.0)

    def __str__(self) -> str:
        return f"privacy recomputation of study {self.study_id} at {self.computed_at:%Y-%m-%d %H:%M:%S}"
