"""The study's evaluation setting on a node: the size-aware held-out share, full-batch steps, the
zero start of convex models, and the local-only baseline whose cost is inside the plan."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_node, make_study, write_csv

from fedproto.errors import SpecError
from fedproto.evaluation import holdout_rows, validate_evaluation
from fedproto.study import StudyConfig
from hospital_node import trainer
from hospital_node.data import load_study_data
from hospital_node.networks import flatten, initial_model

BASELINE = {"holdout": "auto", "local_baseline": True}


def test_auto_holdout_is_sized_per_hospital():
    assert holdout_rows(40, "auto") == 0          # too few rows to judge: all train
    assert holdout_rows(60, "auto") == 6          # 10 % of a small hospital, not 20 %
    assert holdout_rows(499, "auto") == 50
    assert holdout_rows(1000, "auto") == 200
    assert holdout_rows(100_000, "auto") == 1000  # capped
    assert holdout_rows(100, 0.25) == 25 and holdout_rows(100, 0) == 0
    assert holdout_rows(5, 0.1) == 0              # a 1-row split is no split


@pytest.mark.parametrize("bad, match", [
    ({"holdout": 0.6}, "between 0 and 0.5"), ({"holdout": "most"}, "holdout"), ({"holdout": True}, "holdout"),
    ({"local_baseline": "yes"}, "true or false"), ({"extra": 1}, "unknown field"), ("auto", "must be an object"),
])
def test_bad_evaluation_is_refused_naming_the_field(bad, match):
    with pytest.raises(SpecError, match=match):
        validate_evaluation(bad)


def test_small_hospital_trains_on_all_rows_and_larger_ones_hold_out_a_tenth(tmp_path):
    cfg = StudyConfig.from_wire(make_study(evaluation=BASELINE))
    small, larger = tmp_path / "small.csv", tmp_path / "larger.csv"
    write_csv(small, n_rows=45)
    write_csv(larger, n_rows=120)
    assert (load_study_data(cfg, small).n_train, load_study_data(cfg, small).n_test) == (45, 0)
    ds = load_study_data(cfg, larger)
    assert (ds.n_train, ds.n_test) == (108, 12) and set(np.unique(ds.y_test)) == {0.0, 1.0}  # stratified


def test_convex_models_start_from_zero_and_mlps_from_the_seeded_random_model():
    lin = StudyConfig.from_wire(make_study(seed=1))
    assert not flatten(initial_model(lin)).any()
    assert np.array_equal(flatten(initial_model(lin)), flatten(initial_model(StudyConfig.from_wire(make_study(seed=2)))))
    mlp = {"type": "mlp_classifier", "hidden": [4]}
    a = flatten(initial_model(StudyConfig.from_wire(make_study(model=mlp, seed=1))))
    b = flatten(initial_model(StudyConfig.from_wire(make_study(model=mlp, seed=2))))
    assert a.any() and not np.array_equal(a, b)


def test_full_batch_plans_rate_one_and_trains_one_step_per_epoch():
    cfg = StudyConfig.from_wire(make_study(batch_size=0, local_epochs=2, rounds=4))
    plan = trainer.plan_noise(cfg, 70)
    assert plan.sample_rate == 1.0 and plan.steps_per_job == 2 and cfg.local_batch(70) == 70
    rng = np.random.default_rng(0)
    X = rng.normal(size=(70, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)
    res = trainer.train_job(cfg, initial_model(cfg), X, y, plan, seed=3)
    assert res.steps == 2 and np.abs(res.update).max() > 0


def test_baseline_plan_keeps_federated_jobs_and_baseline_inside_the_budget():
    cfg = StudyConfig.from_wire(make_study(evaluation=BASELINE))
    alone, shared = trainer.plan_noise(cfg, 100), trainer.plan_noise(cfg, 100, baseline=True)
    assert shared.noise_multiplier > alone.noise_multiplier and shared.baseline_steps == cfg.rounds * shared.steps_per_job
    jobs = [(shared.noise_multiplier, shared.sample_rate, shared.steps_per_job)] * cfg.rounds
    both = trainer.epsilon_of([*jobs, (shared.noise_multiplier, shared.sample_rate, shared.baseline_steps)], 1e-5)
    assert 0.97 <= both <= 1.0 + 1e-9  # the two together end at the budget, not over it
    fed_only = [(alone.noise_multiplier, alone.sample_rate, alone.steps_per_job)] * cfg.rounds
    assert trainer.epsilon_of(fed_only, 1e-5) == pytest.approx(1.0, abs=0.03)


@pytest.fixture
def node(tmp_path):
    study = make_study(evaluation=BASELINE)
    data = tmp_path / "data.csv"
    write_csv(data, n_rows=200)
    n = make_node(tmp_path, data, study)

    def get_aggregate(sid, r):  # round r's aggregate: this node's own update (one contributor)
        (call,) = [c for c in n.client.named("upload_update") if n.ledger.job(c[1])["round"] == r]
        return call[2], 1

    n.client.get_aggregate = get_aggregate
    yield n, study
    n.ledger.close()


def test_final_evaluation_reports_the_local_only_baseline_once_inside_the_budget(node):
    n, study = node
    for r in range(1, study["rounds"] + 1):
        n.handle({"kind": "train", "job_id": 40 + r, "study": study, "round": r})
    fed_eps = n.ledger.study(study["id"])["epsilon_spent"]
    assert fed_eps < 0.9  # the plan left room for the baseline
    n.handle({"kind": "evaluate", "study_id": study["id"], "study": study, "round": 1})
    (early,) = n.client.named("report")
    assert "local_only" not in early[3] and early[3]["n_test"] == 20  # 10 % of 200 rows
    n.handle({"kind": "evaluate", "study_id": study["id"], "study": study, "round": study["rounds"]})
    body = n.client.named("report")[-1][3]
    base = body["local_only"]
    assert set(base) == {"metrics", "n_train", "n_test", "epsilon", "noise_multiplier", "sample_rate", "steps"}
    assert base["n_train"] == 180 and base["n_test"] == 20 and 0.5 < base["metrics"]["auc"] <= 1.0
    hist = n.ledger.history(study["id"])
    assert len(hist) == study["rounds"] + 1 and hist[-1] == (base["noise_multiplier"], base["sample_rate"], base["steps"])
    assert body["epsilon_spent"] == pytest.approx(trainer.epsilon_of(hist, 1e-5)) == base["epsilon"]
    assert fed_eps < base["epsilon"] <= 1.0 + 1e-9
    # evaluated again (a re-run evaluation): the same baseline, not trained or charged twice
    n.handle({"kind": "evaluate", "study_id": study["id"], "study": study, "round": study["rounds"]})
    assert n.client.named("report")[-1][3]["local_only"] == base and len(n.ledger.history(study["id"])) == len(hist)


def test_a_plan_without_room_for_the_baseline_reports_none_and_spends_nothing(node):
    n, study = node
    no_room = {**study, "evaluation": {"holdout": "auto", "local_baseline": False}}
    n.ledger.remember_study(StudyConfig.from_wire(no_room))
    for r in range(1, study["rounds"] + 1):
        n.handle({"kind": "train", "job_id": 60 + r, "study": no_room, "round": r})
    hist = n.ledger.history(study["id"])
    n.handle({"kind": "evaluate", "study_id": study["id"], "study": no_room, "round": study["rounds"]})
    body = n.client.named("report")[-1][3]
    assert "local_only" not in body and n.ledger.history(study["id"]) == hist


def test_a_small_test_split_keeps_a_rare_class(tmp_path):
    from hospital_node.data import split

    X = np.arange(150, dtype=float).reshape(150, 1)
    y = np.r_[np.ones(4), np.zeros(146)]  # 4 events in 150 rows: 10 % stratified would hold none of them
    X_tr, X_te, y_tr, y_te = split(X, y, seed=3, task="binary_classification", test_size=15)
    assert len(y_te) == 15 and set(y_te) == {0.0, 1.0} and y_tr.sum() == 3
    assert sorted(np.r_[X_tr[:, 0], X_te[:, 0]]) == list(range(150))  # a partition of the rows
