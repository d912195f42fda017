"""Models from the registry and DP training (real torch/Opacus)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedproto.specs import param_shapes
from fedproto.study import Privacy, StudyConfig
from hospital_node import trainer
from hospital_node.data import load_study_data
from hospital_node.networks import flatten, initial_model, load_model_bytes, model_bytes, model_sha256, unflatten_into


@pytest.mark.parametrize("spec", [{"type": "logistic_regression"}, {"type": "mlp_classifier", "hidden": [8, 4]}])
def test_param_names_and_order_match_registry(study, spec):
    study["model"] = spec
    study["n_params"] = sum(int(np.prod(shape)) for _, shape in param_shapes(spec, 4))
    config = StudyConfig.from_wire(study)
    m = initial_model(config)
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == param_shapes(spec, 4)
    assert model_sha256(initial_model(config)) == model_sha256(m)  # identical on every node
    flat = flatten(m)
    assert flat.dtype == np.float64
    m2 = unflatten_into(initial_model(dataclasses.replace(config, seed=5)), flat)
    assert model_sha256(m2) == model_sha256(m)
    assert model_sha256(load_model_bytes(config, model_bytes(m))) == model_sha256(m)


def test_dp_training_learns_and_local_only_baseline(config, data_csv):
    ds = load_study_data(config, data_csv)
    plan = trainer.plan_noise(config, ds.n_train)
    g = initial_model(config)
    res = trainer.train_job(config, g, ds.X_train, ds.y_train, plan, seed=1)
    assert res.update.shape == (5,) and res.steps == plan.steps_per_job
    np.testing.assert_allclose(flatten(res.model) - flatten(g), res.update)
    looser = dataclasses.replace(config, privacy=dataclasses.replace(config.privacy, epsilon=8.0))
    assert looser.privacy == Privacy(8.0, 1e-5, 1.0, "rdp")
    local = trainer.train_local_only(looser, ds.X_train, ds.y_train, seed=1)
    m = trainer.evaluate(local, ds.X_test, ds.y_test, "binary_classification")
    assert set(m) == {"auc", "accuracy"} and m["auc"] > 0.8
    r = trainer.evaluate(local, ds.X_test, ds.y_test, "regression")
    assert r["rmse"] > 0


def test_training_is_abandoned_on_shutdown(config, data_csv):
    ds = load_study_data(config, data_csv)
    plan = trainer.plan_noise(config, ds.n_train)
    with pytest.raises(trainer.TrainingInterrupted):
        trainer.train_job(config, initial_model(config), ds.X_train, ds.y_train, plan, should_stop=lambda: True)
