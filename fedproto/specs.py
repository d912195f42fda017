"""Model registry: declarative specs (a type name plus hyper-parameters), never code.

The node builds the torch module from a spec (hospital_node/networks.py); the platform only
needs the parameter shapes, to check that an upload has the right number of parts.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import SpecError

# The tasks a study can have (the schema's "task"); each model type in MODEL_TYPES serves one.
TASKS = ("binary_classification", "regression", "multiclass_classification", "survival")

MODEL_TYPES: dict[str, dict[str, Any]] = {
    "logistic_regression": {"task": "binary_classification", "mlp": False,
                            "description": "Logistic regression (one linear layer, sigmoid output)"},
    "mlp_classifier": {"task": "binary_classification", "mlp": True,
                       "description": "Multi-layer perceptron with ReLU, binary output"},
    "linear_regression": {"task": "regression", "mlp": False,
                          "description": "Linear regression (one linear layer)"},
    "mlp_regressor": {"task": "regression", "mlp": True,
                      "description": "Multi-layer perceptron with ReLU, one real output"},
}

DEFAULT_HIDDEN = [16]
MAX_HIDDEN_LAYERS = 4
MAX_HIDDEN_WIDTH = 1024


def validate_model_spec(spec: Any, task: str | None = None) -> dict:
    """Return a normalised copy of ``spec`` or raise SpecError saying what to fix."""
    if not isinstance(spec, dict):
        raise SpecError('model spec must be a JSON object such as {"type": "logistic_regression"}')
    mtype = spec.get("type")
    if mtype not in MODEL_TYPES:
        raise SpecError(f"model type {mtype!r} is not in the registry; choose one of {', '.join(MODEL_TYPES)}")
    info = MODEL_TYPES[mtype]
    if task is not None and info["task"] != task:
        raise SpecError(f"model type {mtype!r} is for {info['task']}, but the data schema's task is {task}")
    allowed = {"type", "hidden"} if info["mlp"] else {"type"}
    extra = set(spec) - allowed
    if extra:
        raise SpecError(f"model type {mtype!r} takes no field(s) {sorted(extra)}; allowed: {sorted(allowed)}")
    out: dict[str, Any] = {"type": mtype}
    if info["mlp"]:
        hidden = spec.get("hidden", DEFAULT_HIDDEN)
        if (not isinstance(hidden, list) or not 1 <= len(hidden) <= MAX_HIDDEN_LAYERS
                or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_HIDDEN_WIDTH for h in hidden)):
            raise SpecError(f"'hidden' must be a list of 1 to {MAX_HIDDEN_LAYERS} integers between 1 and "
                            f"{MAX_HIDDEN_WIDTH} (layer widths), got {hidden!r}")
        out["hidden"] = list(hidden)
    return out


def param_shapes(spec: dict, n_features: int) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes, in the order updates are flattened."""
    spec = validate_model_spec(spec)
    if not isinstance(n_features, int) or n_features < 1:
        raise SpecError(f"a model needs at least one feature, got {n_features!r}")
    if not MODEL_TYPES[spec["type"]]["mlp"]:
        return [("linear.weight", (1, n_features)), ("linear.bias", (1,))]
    shapes: list[tuple[str, tuple[int, ...]]] = []
    widths = [n_features, *spec["hidden"], 1]
    for i in range(len(widths) - 1):
        idx = 2 * i  # Linear, ReLU, Linear, ReLU, ... inside nn.Sequential named `layers`
        shapes.append((f"layers.{idx}.weight", (widths[i + 1], widths[i])))
        shapes.append((f"layers.{idx}.bias", (widths[i + 1],)))
    return shapes


def n_params(spec: dict, n_features: int) -> int:
    return sum(math.prod(shape) for _, shape in param_shapes(spec, n_features))
