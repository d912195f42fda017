"""A final-model file as the platform accepts it: safetensors whose metadata carries the study's
preprocessing document and model spec (docs/data.md). The weights are whatever the test needs:
the platform checks the file's hash against the attestations, never its numbers."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save

from fedproto import preprocessing

SPEC = {"type": "logistic_regression"}


def released_model(schema: dict, spec: dict | None = None, weights: dict | None = None) -> bytes:
    doc = preprocessing.build(schema)
    return save(weights or {"w": np.arange(4, dtype=np.float32)},
                metadata={preprocessing.METADATA_KEY: json.dumps(doc, sort_keys=True),
                          preprocessing.MODEL_KEY: json.dumps(spec or SPEC, sort_keys=True)})
