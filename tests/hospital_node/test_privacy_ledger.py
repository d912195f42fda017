"""Privacy accounting and the ledger: real Opacus accountants, real SQLite."""

from __future__ import annotations

import hashlib
import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedproto.study import StudyConfig
from hospital_node import trainer
from hospital_node.errors import BudgetExceeded
from hospital_node.ledger import Ledger, config_sha256


def test_sigma_plan_ends_planned_rounds_within_budget(config):
    for n_train, cap in [(80, None), (152, None), (500, 0.5)]:
        plan = trainer.plan_noise(config, n_train, cap)
        limit = min(config.privacy.epsilon, cap or 1e9)
        hist = [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_job)] * config.rounds
        eps = trainer.epsilon_of(hist, config.privacy.delta)
        assert eps <= limit
        assert eps >= limit - 0.05  # not wastefully noisy
        # every planned job passes the check, one more does not
        h: list[tuple[float, float, int]] = []
        for _ in range(config.rounds):
            trainer.check_budget(config, h, plan, cap)
            h.append((plan.noise_multiplier, plan.sample_rate, plan.steps_per_job))
        with pytest.raises(BudgetExceeded):
            trainer.check_budget(config, h, plan, cap)


def test_sample_rate_and_steps_match_opacus_poisson_loader():
    assert trainer.sample_rate_for(152, 16) == 1 / 10
    assert trainer.job_steps(152, 16, 2) == 20
    assert trainer.sample_rate_for(160, 16) == 16 / 160


def test_ledger_history_survives_reopen_and_rebuilds_the_accountant(tmp_path, study, config):
    path = tmp_path / "ledger.sqlite3"
    led = Ledger(path)
    entries = [(1.3, 0.1, 10), (1.3, 0.1, 10), (1.1, 0.125, 8)]
    for job_id, e in enumerate(entries, start=1):
        led.claim_job(config, job_id, job_id, {"noise_multiplier": 1.3, "sample_rate": 0.1, "steps_per_job": 10,
                                              "n_train": 100, "target_epsilon": 1.0})
        hist = led.history(study["id"])
        eps = trainer.epsilon_of([*hist, e], 1e-5)
        led.record_spend(job_id, study["id"], e, {"epsilon": eps}, str(tmp_path / f"{job_id}.flw"))
    led.close()

    led = Ledger(path)
    hist = led.history(study["id"])
    assert hist == entries
    fresh = RDPAccountant()
    for sigma, q, steps in entries:
        for _ in range(steps):
            fresh.step(noise_multiplier=sigma, sample_rate=q)
    assert trainer.epsilon_of(hist, 1e-5, "rdp") == pytest.approx(fresh.get_epsilon(delta=1e-5), rel=1e-12)
    # the node's cached RDP composition is Opacus' own computation on the same history: equal to the last bit
    assert trainer.epsilon_of(hist, 1e-5, "rdp") == trainer.make_accountant("rdp", hist).get_epsilon(delta=1e-5)
    row = led.study(study["id"])
    assert row["rounds_trained"] == 3 and row["epsilon_spent"] == pytest.approx(fresh.get_epsilon(delta=1e-5))
    assert [j["state"] for j in led.jobs(study["id"])] == ["spend_recorded"] * 3
    for delta in (1e-5, 1e-7):
        for h in (hist[:1], hist, hist * 3, [(0.7, 0.01, 1), *hist, (2.5, 0.5, 11)]):
            assert trainer.epsilon_of(h, delta) == trainer.make_accountant("rdp", h).get_epsilon(delta=delta)
    # PRV rebuilt from the same history agrees with a fresh PRV accountant
    prv = PRVAccountant()
    prv.history = list(entries)
    assert trainer.epsilon_of(hist, 1e-5, "prv") == pytest.approx(prv.get_epsilon(delta=1e-5), rel=1e-6)


def test_spend_is_recorded_once_per_job(tmp_path, study, config):
    led = Ledger(tmp_path / "l.sqlite3")
    led.claim_job(config, 1, 1, None)
    led.record_spend(1, study["id"], (1.0, 0.1, 5), {"epsilon": 0.3}, "f")
    with pytest.raises(RuntimeError, match="cannot be recorded again"):
        led.record_spend(1, study["id"], (1.0, 0.1, 5), {"epsilon": 0.6}, "f")
    assert led.history(study["id"]) == [(1.0, 0.1, 5)]
    # a claimed-again job that already spent stays where it is
    led.claim_job(config, 1, 1, None)
    assert led.job(1)["state"] == "spend_recorded"
    assert json.loads(led.job(1)["spend_json"]) == {"epsilon": 0.3}


def test_config_hash_and_stored_study_are_those_of_the_wire_dict(tmp_path, study):
    """Ledgers written before StudyConfig existed hashed and stored the study dict as the platform
    sent it: the same study must give the same hash (or its privacy plan would be refused). The
    default ``evaluation`` is not hashed (ledgers written before it keep matching); another is."""
    keys = ("schema", "model", "rounds", "local_epochs", "batch_size", "learning_rate", "privacy", "encryption", "seed")
    other = StudyConfig.from_wire(study)
    assert config_sha256(other) == hashlib.sha256(json.dumps({k: study.get(k) for k in (*keys, "evaluation")},
                                                              sort_keys=True).encode()).hexdigest()
    study["evaluation"] = {"holdout": "auto", "local_baseline": True}
    config = StudyConfig.from_wire(study)
    before = hashlib.sha256(json.dumps({k: study.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()
    assert config_sha256(config) == before
    led = Ledger(tmp_path / "l.sqlite3")
    led.remember_study(config, invitation_state="approved")
    row = led.study(study["id"])
    assert json.loads(row["config_json"]) == study and row["config_sha256"] == before
    assert led.study_config(study["id"]) == config
