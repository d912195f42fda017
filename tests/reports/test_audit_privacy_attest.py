"""Privacy accounting an auditor can recompute, and model attestations that must agree."""

from __future__ import annotations

from io import StringIO

import pytest
from audit_support import done_round_with_jobs, spend_for
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from reports.epsilon_check import epsilon_for, recompute_study
from reports.report import render_html
from reports.selectors import attestations, problem_events
from studies import services
from studies.models import Participation, PrivacySpend


def approved(world):
    return [h for h in world["hospitals"]
            if Participation.objects.get(study=world["study"], hospital=h).state == "approved"]


def report_spends(world, *, lie_in_round2: float | None = None):
    study = world["study"]
    a, b = approved(world)
    for n in (1, 2):
        _, (ja, jb) = done_round_with_jobs(study, [a, b], n)
        services.privacy_spend_record(job=ja, hospital=a, spend=spend_for(n))
        spend_b = spend_for(n)
        if n == 2 and lie_in_round2 is not None:
            spend_b["epsilon"] = lie_in_round2
        services.privacy_spend_record(job=jb, hospital=b, spend=spend_b)
    return a, b


def recompute_cmd(study) -> str:
    out = StringIO()
    call_command("audit_recompute_epsilon", "--study", str(study.pk), stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_honest_spends_recompute_exactly(postgres, accountant):
    from audit_support import enrolled, make_study

    from consortia.services import consortium_create

    c = consortium_create(name=f"Privacy {accountant}")
    a, b = enrolled(c, "A"), enrolled(c, "B")
    study = make_study(c, [a, b], accountant=accountant)
    for p in Participation.objects.filter(study=study):
        services.participation_decide(participation=p, decision="approve", actor="test")
    for n in (1, 2):
        _, jobs = done_round_with_jobs(study, [a, b], n)
        for h, j in zip((a, b), jobs):
            services.privacy_spend_record(job=j, hospital=h, spend=spend_for(n, accountant=accountant))
    res = recompute_study(study)
    assert res.ok, res.as_data()
    assert [len(h.jobs) for h in res.hospitals] == [2, 2]
    assert all(abs(h.recomputed - spend_for(2, accountant=accountant)["epsilon"]) < 1e-9 for h in res.hospitals)
    out = recompute_cmd(study)
    assert "every reported epsilon matches" in out
    ev = AuditEvent.objects.filter(study_id=study.pk, action="privacy.recompute").get()
    assert ev.data["ok"] is True and {h["hospital"] for h in ev.data["hospitals"]} == {"A", "B"}


def test_misreported_epsilon_is_flagged(light_world):
    study = light_world["study"]
    true_eps = spend_for(2)["epsilon"]
    # B understates its second-round spend (still above its first, or it would be refused as decreasing)
    _, b = report_spends(light_world, lie_in_round2=(spend_for(1)["epsilon"] + true_eps) / 2)
    with pytest.raises(CommandError, match="does not check out for: Hospital B"):
        recompute_cmd(study)
    ev = AuditEvent.objects.filter(study_id=study.pk, action="privacy.recompute").get()
    assert ev.data["ok"] is False
    rows = {h["hospital"]: h for h in ev.data["hospitals"]}
    assert rows["Hospital A"]["ok"] is True
    assert rows["Hospital B"]["ok"] is False
    assert abs(rows["Hospital B"]["recomputed"] - true_eps) < 1e-9
    assert "round 2: reported cumulative epsilon" in rows["Hospital B"]["problems"][0]
    assert "understates" in rows["Hospital B"]["problems"][0]
    # The failed recomputation is listed among the study's problems, and the report says so.
    assert problem_events(study.pk).filter(action="privacy.recompute").exists()
    html = render_html(study)
    assert "epsilon recomputation found mismatches for Hospital B" in html
    assert '<span class="small bad">MISMATCH</span>' in html and "understates the spend" in html


def test_inputs_that_differ_from_the_study_are_flagged(light_world):
    study = light_world["study"]
    a, b = approved(light_world)
    _, (ja, jb) = done_round_with_jobs(study, [a, b], 1)
    services.privacy_spend_record(job=ja, hospital=a, spend=spend_for(1))
    wrong_delta = spend_for(1, delta=1e-3)  # self-consistent numbers, but not at the study's delta
    services.privacy_spend_record(job=jb, hospital=b, spend=wrong_delta)
    res = recompute_study(study)
    assert not res.ok
    b_check = next(h for h in res.hospitals if h.hospital == "Hospital B")
    assert "delta 0.001 differs from the study's 1e-05" in b_check.problems[0]


def test_spend_over_budget_is_refused_and_audited(light_world):
    study = light_world["study"]
    a, b = approved(light_world)
    _, (ja,) = done_round_with_jobs(study, [a], 1)
    spend = spend_for(1)
    spend.update(noise_multiplier=0.6, epsilon=epsilon_for([(0.6, 0.05, 20)], 1e-5, "rdp"))
    assert spend["epsilon"] > study.epsilon
    with pytest.raises(services.ServiceError, match="above this hospital's budget") as exc:
        services.privacy_spend_record(job=ja, hospital=a, spend=spend)
    assert exc.value.status == 422 and exc.value.code == "over_budget"
    assert not PrivacySpend.objects.filter(job=ja).exists()
    ev = AuditEvent.objects.get(study_id=study.pk, action="privacy.spend_refused")
    assert ev.hospital_id == a.pk and ev.data["code"] == "over_budget"
    # Within the budget it is recorded.
    services.privacy_spend_record(job=ja, hospital=a, spend=spend_for(1))
    assert recompute_study(study).ok


def test_a_zero_step_job_adds_nothing_to_the_recomputed_epsilon():
    for accountant in ("rdp", "prv"):
        one = epsilon_for([(2.0, 0.05, 20)], 1e-5, accountant)
        assert epsilon_for([(2.0, 0.05, 20), (2.0, 0.05, 0)], 1e-5, accountant) == one
    assert epsilon_for([(2.0, 0.05, 0)], 1e-5, "prv") == 0.0


def test_attestations_that_disagree_are_flagged(light_world):
    study = light_world["study"]
    a, b = approved(light_world)
    r1, _ = done_round_with_jobs(study, [a, b], 1)
    r2, _ = done_round_with_jobs(study, [a, b], 2)
    good, other = "a" * 64, "b" * 64
    for h in (a, b):
        services.round_report_record(rnd=r1, hospital=h, metrics={"auc": 0.9}, n_test=10, model_sha256=good,
                                     epsilon_spent=None)
    services.round_report_record(rnd=r2, hospital=a, metrics={"auc": 0.9}, n_test=10, model_sha256=good,
                                 epsilon_spent=None)
    atts = attestations(study)
    assert atts[1] == {"round": 2, "attempt": 1, "hashes": {good: ["Hospital A"]}, "mismatch": False,
                       "not_attested": ["Hospital B"]}
    services.round_report_record(rnd=r2, hospital=b, metrics={"auc": 0.5}, n_test=10, model_sha256=other,
                                 epsilon_spent=None)
    atts = attestations(study)
    assert atts[0]["mismatch"] is False and atts[0]["hashes"] == {good: ["Hospital A", "Hospital B"]}
    assert atts[1]["mismatch"] is True
    assert atts[1]["hashes"] == {good: ["Hospital A"], other: ["Hospital B"]}
    ev = AuditEvent.objects.get(study_id=study.pk, action="model.attestation_mismatch")
    assert ev.data == {"round": 2, "hashes": [good, other]} and ev.hospital_id == b.pk
    assert problem_events(study.pk).filter(action="model.attestation_mismatch").count() == 1
    html = render_html(study)
    assert '<span class="bad">hospitals disagree</span>' in html and "MISMATCH" in html and other in html
