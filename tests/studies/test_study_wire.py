"""The study dict the platform sends nodes is exactly fedproto.study's wire form, and its
config hash is the one node ledgers stored before StudyConfig existed."""

from __future__ import annotations

import hashlib
import json

import pytest

from fedproto.study import WIRE_FIELDS, StudyConfig
from hospital_node.ledger import config_sha256
from studies.selectors import study_config, work_items_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_platform_study_config_round_trips_through_study_config(world):
    study = world["study"]
    wire = study_config(study)
    assert list(wire) == list(WIRE_FIELDS)
    cfg = StudyConfig.from_wire(wire)
    assert cfg.to_wire() == wire and json.dumps(cfg.to_wire(), sort_keys=True) == json.dumps(wire, sort_keys=True)
    keys = ("schema", "model", "rounds", "local_epochs", "batch_size", "learning_rate", "privacy", "encryption", "seed")
    stored = hashlib.sha256(json.dumps({k: wire[k] for k in keys}, sort_keys=True).encode()).hexdigest()
    assert config_sha256(cfg) == stored
    (invitation,) = work_items_for(study.participations.first().hospital)
    assert invitation["kind"] == "invitation" and StudyConfig.from_wire(invitation["study"]) == cfg
