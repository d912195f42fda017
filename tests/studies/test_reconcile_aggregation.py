"""A round whose aggregation was lost (its worker died) is aggregated again by the reconciler after
settings.AGGREGATION_GRACE_S, and the repair is logged; one still within the grace is left alone."""

from __future__ import annotations

import logging
from datetime import timedelta

from audit_support import light_world, postgres  # noqa: F401 - fixtures
from django.utils import timezone

from studies.models import Round
from studies.tasks import reconcile


def test_a_lost_aggregation_is_repaired_after_the_grace_and_logged(light_world, settings, caplog):  # noqa: F811
    study = light_world["study"]
    rnd = Round.objects.create(study=study, number=1, status=Round.Status.AGGREGATING,
                               closed_at=timezone.now() - timedelta(seconds=30))
    settings.AGGREGATION_GRACE_S = 60
    caplog.set_level(logging.WARNING, logger="studies.tasks")
    assert reconcile()["aggregated"] == 0
    assert not [r for r in caplog.records if "aggregating for" in r.getMessage()]

    settings.AGGREGATION_GRACE_S = 10
    reconcile()  # the repair itself fails here (this test round has no HE context): that is logged too
    [repair] = [r for r in caplog.records if "aggregating for" in r.getMessage()]
    assert f"round {rnd.pk} has been aggregating for 30 s" in repair.getMessage()
