"""The epsilon recomputation kept on the study: the same numbers as a fresh Opacus accountant, used
only while its inputs are unchanged, brought up to date when a spend is recorded or the study ends."""

from __future__ import annotations

import json
import random

import pytest
from audit_support import done_round_with_jobs, spend_for
from django.contrib.auth import get_user_model
from django.test import Client

from consortia.models import Hospital
from consortia.services import membership_grant
from reports.epsilon_check import Accountants, epsilon_for
from reports.models import PrivacyRecomputation
from reports.privacy_cache import cached_recompute
from studies import services
from studies.models import Participation, PrivacySpend


def test_accountants_give_the_fresh_accountant_numbers_bit_for_bit():
    rng = random.Random(5)
    pairs = [(1.1, 0.02), (0.8, 0.1), (2.5, 0.004)]
    history = []
    acc = Accountants()
    for _ in range(8):
        s, q = rng.choice(pairs)
        history.append((s, q, rng.choice([0, 1, 7, 20])))
        assert acc.epsilon(history, 1e-5, "rdp") == epsilon_for(history, 1e-5, "rdp")
    assert acc.computed == len({(s, q) for s, q, n in history if n})  # one-step RDP once per (sigma, q)
    # The memo survives a JSON round trip (it is stored as text) and is reused: nothing recomputed.
    again = Accountants(json.loads(json.dumps(acc.memo)))
    assert again.epsilon(history, 1e-6, "rdp") == epsilon_for(history, 1e-6, "rdp") and again.computed == 0
    prv = [(1.2, 0.05, 10), (1.2, 0.05, 10)]
    assert acc.epsilon(prv, 1e-5, "prv") == epsilon_for(prv, 1e-5, "prv")
    n = acc.computed
    assert acc.epsilon(prv, 1e-5, "prv") == epsilon_for(prv, 1e-5, "prv") and acc.computed == n
    assert acc.epsilon([(1.0, 0.1, 0)], 1e-5, "rdp") == 0.0


def _spend(study, hospitals, number, **override):
    _, jobs = done_round_with_jobs(study, hospitals, number)
    for h, j in zip(hospitals, jobs):
        services.privacy_spend_record(job=j, hospital=h, spend={**spend_for(number), **override})


def _approved(world):
    return [p.hospital for p in Participation.objects.filter(study=world["study"], state="approved")
            .select_related("hospital").order_by("hospital__name")]


def test_the_stored_recomputation_is_used_only_while_its_inputs_are_unchanged(light_world):
    study = light_world["study"]
    a, b = _approved(light_world)
    _spend(study, [a, b], 1)
    res, row = cached_recompute(study)
    assert res.ok and row.n_spends == 2
    first = (row.pk, row.computed_at)
    res2, row2 = cached_recompute(study)
    assert (row2.pk, row2.computed_at) == first and res2.as_dict() == res.as_dict()
    # A new spend: recomputed, covering it.
    _spend(study, [a, b], 2)
    res3, row3 = cached_recompute(study)
    assert row3.n_spends == 4 and row3.computed_at > first[1] and len(res3.hospitals[0].jobs) == 2
    # A hospital's cap lowered below what it spent: the stored "within budget" must not survive.
    Hospital.objects.filter(pk=a.pk).update(max_epsilon=0.01)
    res4, _ = cached_recompute(study)
    assert not res4.ok and not next(h for h in res4.hospitals if h.hospital == a.name).within_budget
    # A spend edited in the database behind the platform's back: the edit is found, not hidden by the cache.
    Hospital.objects.filter(pk=a.pk).update(max_epsilon=None)
    assert cached_recompute(study)[0].ok
    ps = PrivacySpend.objects.filter(job__hospital=b, job__round__study=study).order_by("job_id").last()
    PrivacySpend.objects.filter(pk=ps.pk).update(epsilon=ps.epsilon * 0.5)
    res5, _ = cached_recompute(study)
    hb = next(h for h in res5.hospitals if h.hospital == b.name)
    assert not hb.ok and "understates the spend" in hb.problems[-1]


@pytest.mark.django_db(transaction=True)
def test_recorded_spends_and_the_end_of_a_study_bring_it_up_to_date(light_world, eager_celery):
    study = light_world["study"]
    a, b = _approved(light_world)
    _spend(study, [a, b], 1)
    row = PrivacyRecomputation.objects.get(study=study)
    assert row.n_spends == 2 and json.loads(row.result_json)["ok"]
    at = row.computed_at
    services.study_cancel(study=study, actor="user:1:rita", reason="funding ended")
    row.refresh_from_db()
    assert row.n_spends == 2 and row.computed_at >= at
    # The report reads it (and says when it was computed) without recomputing.
    u = get_user_model().objects.create_user(username="aud")
    membership_grant(user=u, consortium=light_world["consortium"], role="auditor")
    c = Client()
    c.force_login(u)
    html = c.get(f"/audit/studies/{study.pk}/report/").content.decode()
    assert f"Recomputed {row.computed_at:%Y-%m-%d %H:%M:%S} UTC from the 2 privacy spends" in html
    assert PrivacyRecomputation.objects.get(study=study).computed_at == row.computed_at
