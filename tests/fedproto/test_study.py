"""fedproto.study: the study bounds (good and bad values), the wire form and immutability."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from fedproto import PROTOCOL_VERSION
from fedproto.errors import SpecError
from fedproto.study import (
    MAX_BATCH_SIZE,
    MAX_LEARNING_RATE,
    MAX_LOCAL_EPOCHS,
    MAX_NAME_LENGTH,
    MAX_ROUND_DEADLINE_S,
    MAX_ROUNDS,
    MAX_SEED,
    MIN_ROUND_DEADLINE_S,
    MIN_SEED,
    SEED_DRAW_BOUND,
    WIRE_FIELDS,
    Privacy,
    StudyConfig,
    WorkKind,
    validate_study,
)


def wire(**over) -> dict:
    """A study dict exactly as platform/studies/selectors.py study_config() sends it."""
    d = {
        "id": 7, "name": "Sepsis", "consortium": "North", "protocol_version": PROTOCOL_VERSION,
        "schema": {"task": "binary_classification",
                   "features": [{"name": "age", "type": "float", "center": 60.0, "scale": 12.0},
                                {"name": "lactate", "type": "float"}, {"name": "ventilated", "type": "bool"}],
                   "label": {"name": "death", "type": "binary"}},
        "model": {"type": "mlp_classifier", "hidden": [8, 4]},
        "rounds": 5, "local_epochs": 2, "batch_size": 32, "learning_rate": 0.1,
        "privacy": {"epsilon": 1.0, "delta": 1e-05, "clip_norm": 1.0, "accountant": "rdp"},
        "encryption": {"codec": "bfv-packed-raw-v1", "max_hospitals": 200, "quant_bits": 12,
                       "update_clip": 1.0, "weight_cap_samples": 1000},
        "quorum": 2, "round_deadline_s": 600, "seed": 1234, "custodian_hospital_id": 3,
        "n_params": 3 * 8 + 8 + 8 * 4 + 4 + 4 + 1, "evaluation": {"holdout": "auto", "local_baseline": True},
        "datasets": {"default": "default"},
    }
    d.update(over)
    return d


def definition(**over) -> dict:
    """What a researcher defines before the platform stores the study (no id, custodian, seed)."""
    d = {k: v for k, v in wire().items() if k not in ("id", "custodian_hospital_id", "seed", "n_params")}
    d.update(over)
    return d


# ---------------------------------------------------------------- wire form

def test_from_wire_to_wire_round_trip_is_exact():
    d = wire()
    cfg = StudyConfig.from_wire(d)
    assert cfg.to_wire() == d
    assert list(cfg.to_wire()) == list(WIRE_FIELDS)
    assert json.dumps(cfg.to_wire(), sort_keys=True) == json.dumps(d, sort_keys=True)
    assert StudyConfig.from_wire(cfg.to_wire()) == cfg
    assert cfg.study_id == 7 and cfg.task == "binary_classification" and cfg.n_features == 3
    assert cfg.codec == "bfv-packed-raw-v1" and cfg.privacy == Privacy(1.0, 1e-5, 1.0, "rdp")
    assert StudyConfig.from_wire(wire(custodian_hospital_id=None)).custodian_hospital_id is None


@pytest.mark.parametrize("bad, match", [
    ([1, 2], "must be a JSON object"),
    (None, "must be a JSON object"),
    ({k: v for k, v in wire().items() if k != "seed"}, r"missing field\(s\) \['seed'\]"),
    ({k: v for k, v in wire().items() if k != "n_params"}, r"missing field\(s\) \['n_params'\]"),
    (wire(extra=1), r"unknown field\(s\) \['extra'\]"),
    (wire(id=None), "study id must be an integer"),
    (wire(id="7"), "study id must be an integer"),
    (wire(seed=None), "seed must be an integer"),
    (wire(protocol_version=2), "protocol_version 2 is not supported.*upgrade"),
    (wire(n_params=10), "n_params 10 does not match its model.*73 parameters"),
    (wire(n_params=73.0), "n_params 73.0 does not match its model.*73 parameters"),
    (wire(schema={"task": "ranking"}), "schema task 'ranking' is not supported"),
    (wire(model={"type": "linear_regression"}), "is for regression"),
    (wire(privacy={"epsilon": 1.0}), "privacy delta"),
    (wire(encryption={"codec": "rot13"}), "unknown encryption codec 'rot13'"),
    (wire(encryption={"codec": "bfv-packed-raw-v1", "quant_bits": 99}), r"encryption.quant_bits=99 is out of range"),
    (wire(custodian_hospital_id=0), "custodian_hospital_id must be an integer"),
    (wire(consortium=None), "consortium must be the consortium's name"),
    (wire(rounds="5"), "rounds must be an integer"),
])
def test_a_bad_wire_dict_raises_spec_error(bad, match):
    with pytest.raises(SpecError, match=match):
        StudyConfig.from_wire(bad)


def test_config_is_immutable_and_hands_out_copies():
    d = wire()
    cfg = StudyConfig.from_wire(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rounds = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.privacy.epsilon = 9.0  # type: ignore[misc]
    before = copy.deepcopy(cfg.to_wire())
    # the input and the output are not shared with the config
    d["schema"]["features"][0]["name"] = "changed"
    d["encryption"]["quant_bits"] = 16
    out = cfg.to_wire()
    out["schema"]["features"].clear()
    out["model"]["hidden"].append(99)
    out["privacy"]["epsilon"] = 50.0
    assert cfg.to_wire() == before


# ---------------------------------------------------------------- bounds, good and bad

@pytest.mark.parametrize("field, good, bad", [
    ("rounds", [1, MAX_ROUNDS], [0, MAX_ROUNDS + 1, 2.0, True, None]),
    ("local_epochs", [1, MAX_LOCAL_EPOCHS], [0, MAX_LOCAL_EPOCHS + 1, "1"]),
    ("batch_size", [0, 1, MAX_BATCH_SIZE], [MAX_BATCH_SIZE + 1, -5]),  # 0: full batch
    ("learning_rate", [1e-9, 1, MAX_LEARNING_RATE], [0, -0.1, MAX_LEARNING_RATE * 1.01, float("nan"), float("inf"), "0.1"]),
    ("round_deadline_s", [MIN_ROUND_DEADLINE_S, MAX_ROUND_DEADLINE_S], [MIN_ROUND_DEADLINE_S - 1, MAX_ROUND_DEADLINE_S + 1]),
    ("seed", [MIN_SEED, 0, MAX_SEED], [MIN_SEED - 1, MAX_SEED + 1, 1.5]),
    ("name", ["x", "n" * MAX_NAME_LENGTH], ["", "n" * (MAX_NAME_LENGTH + 1), 3]),
])
def test_each_bound_accepts_its_range_and_names_the_field_outside_it(field, good, bad):
    for v in good:
        assert getattr(StudyConfig.from_wire(wire(**{field: v})), field) == v
    for v in bad:
        with pytest.raises(SpecError, match=field):
            StudyConfig.from_wire(wire(**{field: v}))


def test_learning_rate_is_a_float_and_a_bound_message_says_what_to_put_there():
    assert StudyConfig.from_wire(wire(learning_rate=1)).learning_rate == 1.0
    with pytest.raises(SpecError, match=rf"rounds must be an integer between 1 and {MAX_ROUNDS}, got 0"):
        validate_study(definition(rounds=0), n_hospitals=2)


@pytest.mark.parametrize("privacy, match", [
    ({"epsilon": 0, "delta": 1e-5, "clip_norm": 1.0}, "privacy epsilon"),
    ({"epsilon": 101, "delta": 1e-5, "clip_norm": 1.0}, "privacy epsilon"),
    ({"epsilon": 1.0, "delta": 0.2, "clip_norm": 1.0}, "privacy delta"),
    ({"epsilon": 1.0, "delta": 1e-5, "clip_norm": 0}, "privacy clip_norm"),
    ({"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "accountant": "gdp"}, "accountant 'gdp'"),
    ({"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "sigma": 1}, r"unknown field\(s\) \['sigma'\]"),
])
def test_privacy_bounds(privacy, match):
    with pytest.raises(SpecError, match=match):
        validate_study(definition(privacy=privacy))
    good = validate_study(definition(privacy={"epsilon": 100, "delta": 0.1, "clip_norm": 1000}))
    assert good.privacy == Privacy(100.0, 0.1, 1000.0, "rdp")


def test_quorum_and_hospital_count():
    assert validate_study(definition(quorum=3), n_hospitals=3).quorum == 3
    with pytest.raises(SpecError, match=r"quorum must be an integer between 1 and 2 \(the number of invited hospitals\)"):
        validate_study(definition(quorum=3), n_hospitals=2)
    with pytest.raises(SpecError, match="quorum must be an integer between 1"):
        validate_study(definition(quorum=0), n_hospitals=2)
    with pytest.raises(SpecError, match="invite at least one hospital"):
        validate_study(definition(quorum=1), n_hospitals=0)
    small = {"codec": "bfv-packed-raw-v1", "max_hospitals": 3}
    with pytest.raises(SpecError, match="4 hospitals invited but the encryption is sized for at most 3"):
        validate_study(definition(encryption=small), n_hospitals=4)
    # without the invitations (a node reading the wire), the encryption bounds the quorum
    assert StudyConfig.from_wire(wire(encryption=small, quorum=3)).quorum == 3
    with pytest.raises(SpecError, match=r"quorum must be an integer between 1 and 3 \(encryption.max_hospitals\)"):
        StudyConfig.from_wire(wire(encryption=small, quorum=4))


def test_validate_study_normalises_a_definition():
    cfg = validate_study(definition(encryption={}, model={"type": "mlp_classifier"}), n_hospitals=2)
    assert cfg.id is None and cfg.custodian_hospital_id is None and cfg.protocol_version == PROTOCOL_VERSION
    assert 0 <= cfg.seed < SEED_DRAW_BOUND  # drawn: a study needs one, the platform stores it
    assert cfg.encryption["codec"] == "bfv-packed-raw-v1" and cfg.encryption["quant_bits"] == 12  # codec defaults
    assert cfg.model == {"type": "mlp_classifier", "hidden": [16]} and cfg.n_params == 3 * 16 + 16 + 16 + 1
    assert validate_study(definition(seed=5)).seed == 5
    with pytest.raises(SpecError, match="has no id yet"):
        cfg.study_id  # noqa: B018


def test_work_kinds_are_the_ones_the_platform_sends():
    assert WorkKind.ALL == ("invitation", "publish_context", "seal_keys", "fetch_key", "train", "evaluate",
                            "upload_final_model")
