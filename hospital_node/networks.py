"""Torch modules built from the declarative model registry (fedproto.specs).

Parameter names and order match fedproto.specs.param_shapes exactly, so a flat
update vector means the same thing on every node and on the platform.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save
from torch import nn

from fedproto.specs import MODEL_TYPES, param_shapes, validate_model_spec
from fedproto.study import StudyConfig


class LinearModel(nn.Module):
    """logistic_regression / linear_regression: one Linear layer named ``linear``."""

    def __init__(self, n_features: int):
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class MLPModel(nn.Module):
    """mlp_classifier / mlp_regressor: nn.Sequential(Linear, ReLU, ..., Linear(.,1)) named ``layers``."""

    def __init__(self, n_features: int, hidden: list[int]):
        super().__init__()
        widths = [n_features, *hidden, 1]
        mods: list[nn.Module] = []
        for i in range(len(widths) - 1):
            mods.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                mods.append(nn.ReLU())
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)


def build_model(spec: dict[str, Any], n_features: int) -> nn.Module:
    """Build an (uninitialised-seed) module for ``spec``; float32."""
    spec = validate_model_spec(spec)
    if MODEL_TYPES[spec["type"]]["mlp"]:
        model: nn.Module = MLPModel(n_features, spec["hidden"])
    else:
        model = LinearModel(n_features)
    _check_names(model, spec, n_features)
    return model.float()


def initial_model(study: StudyConfig) -> nn.Module:
    """The round-0 global model, identical on every node: all zeros for a convex model (linear,
    logistic: its loss has one minimum, and a zero start makes the study's outcome independent of
    its seed), else seeded by the study seed."""
    torch.manual_seed(study.seed)
    model = build_model(study.model, study.n_features)
    if not MODEL_TYPES[study.model["type"]]["mlp"]:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return model


def _check_names(model: nn.Module, spec: dict[str, Any], n_features: int) -> None:
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    want = param_shapes(spec, n_features)
    if got != want:  # a programming error, never a user error
        raise AssertionError(f"model parameters {got} do not match the registry {want}")


def flatten(model: nn.Module) -> np.ndarray:
    """All parameters as one float64 vector, in param_shapes order, each tensor row-major."""
    sd = model.state_dict()
    return torch.cat([sd[k].detach().reshape(-1).to(torch.float64) for k in sd]).numpy()


def unflatten_into(model: nn.Module, flat: np.ndarray) -> nn.Module:
    """Load a flat vector (param_shapes order) into ``model`` in place; returns it."""
    flat = np.asarray(flat, dtype=np.float64)
    sd = model.state_dict()
    total = sum(v.numel() for v in sd.values())
    if flat.shape != (total,):
        raise ValueError(f"flat vector has shape {flat.shape}, the model has {total} parameters")
    new, off = {}, 0
    for k, v in sd.items():
        n = v.numel()
        new[k] = torch.from_numpy(flat[off:off + n].copy()).reshape(v.shape).to(v.dtype)
        off += n
    model.load_state_dict(new)
    return model


def model_from_flat(study: StudyConfig, flat: np.ndarray) -> nn.Module:
    model = build_model(study.model, study.n_features)
    return unflatten_into(model, flat)


def model_bytes(model: nn.Module) -> bytes:
    """safetensors bytes of the state dict, float32 contiguous (what is attested and uploaded)."""
    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in plain_state_dict(model).items()}
    return save(sd)


def model_sha256(model: nn.Module) -> str:
    return hashlib.sha256(model_bytes(model)).hexdigest()


def load_model_bytes(study: StudyConfig, data: bytes) -> nn.Module:
    """Build the study's model from safetensors bytes (never pickle)."""
    model = build_model(study.model, study.n_features)
    model.load_state_dict(load(data))
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without the wrapper prefix Opacus adds (``_module.``)."""
    inner = getattr(model, "_module", model)
    return inner.state_dict()
