"""Settings from the declared sizes alone (fedproto.tuning): what "auto" and the scaled presets pick."""

from __future__ import annotations

import pytest

from fedproto.errors import SpecError
from fedproto.privacy import FULL_BATCH, sample_rate, steps_per_epoch
from fedproto.study import validate_study
from fedproto.tuning import apply_auto, auto_settings, scaled_preset


def test_auto_is_noisy_full_batch_descent_for_convex_models():
    s = auto_settings([50, 140, 900], "logistic_regression")
    assert s == {"rounds": 10, "local_epochs": 1, "batch_size": FULL_BATCH, "learning_rate": 2.0, "clip_norm": 1.0}
    assert steps_per_epoch(50, FULL_BATCH) == 1 and sample_rate(900, FULL_BATCH) == 1.0
    assert auto_settings([50], "linear_regression")["learning_rate"] == 1.0


def test_auto_gives_mlps_small_batches_sized_by_the_smallest_hospital():
    assert auto_settings([60, 2000], "mlp_classifier")["batch_size"] == 15
    assert auto_settings([20], "mlp_classifier")["batch_size"] == 8
    assert auto_settings([10_000], "mlp_regressor")["batch_size"] == 256


def test_presets_scale_their_batch_and_keep_the_rest():
    assert scaled_preset("standard", [50, 300])["batch_size"] == 12  # 64 would be a sampling rate of 1.0 at 50 rows
    assert scaled_preset("standard", [5000])["batch_size"] == 64 and scaled_preset("standard", None)["batch_size"] == 64
    assert scaled_preset("strict", [3])["batch_size"] == 1


@pytest.mark.parametrize("sizes, match", [([], "expected data set sizes"), ([1], "between 2"), ([True], "whole number"),
                                          ([12.5], "whole number")])
def test_bad_declared_sizes_are_refused(sizes, match):
    with pytest.raises(SpecError, match=match):
        auto_settings(sizes, "logistic_regression")


def test_apply_auto_refuses_values_it_would_overwrite_and_builds_a_valid_study():
    with pytest.raises(SpecError, match="chooses rounds, privacy.clip_norm itself"):
        apply_auto({"rounds": 3}, {"epsilon": 1.0, "clip_norm": 2.0}, [60], "logistic_regression")
    with pytest.raises(SpecError, match="preset 'nope' does not exist"):
        apply_auto({}, {}, [60], "logistic_regression", "nope")
    fields, privacy = apply_auto({}, {"epsilon": 1.0, "delta": 1e-5}, [60, 80], "logistic_regression")
    schema = {"task": "binary_classification", "features": [{"name": "a", "type": "float"}], "label": {"name": "y"}}
    cfg = validate_study({"name": "s", "schema": schema, "model": {"type": "logistic_regression"}, **fields,
                          "privacy": privacy, "encryption": {"codec": "bfv-packed-raw-v1"}, "quorum": 1,
                          "round_deadline_s": 60})
    assert cfg.full_batch and cfg.local_batch(80) == 80 and cfg.privacy.clip_norm == 1.0
