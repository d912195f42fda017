"""DP-SGD settings chosen from the hospitals' declared sizes alone ("auto"), without looking at
data and without spending privacy budget on tuning (docs/utility.md has the measurements).

Why these rules: the noise DP-SGD adds to a step's mean gradient is sigma * clip / batch, and at
the sizes of small hospitals (50 to a few hundred rows) the largest batch buys the most signal
per unit of epsilon. For convex models (linear and logistic regression, linear Cox) ``auto``
is noisy full-batch gradient descent: batch_size 0 (each hospital steps on all its rows,
sampling rate 1), one local step per round, 10 rounds, learning rate 2 (1 for a squared loss),
clip 1 on standardised inputs. A federated average of full-batch gradients is the pooled
gradient, so the study follows what central training would do, plus noise that shrinks with
the total number of rows. MLPs need many small steps: a batch of a quarter of the smallest
declared size (8 to 256), 2 local epochs, learning rate 0.5.

The presets keep their character but their batch scales with the smallest declared size
(never more than a quarter of it), instead of a fixed batch that is a sampling rate of 1.0
at a 50-row hospital.
"""

from __future__ import annotations

from typing import Any, Iterable

from .errors import SpecError
from .privacy import FULL_BATCH
from .specs import MODEL_TYPES

MIN_DECLARED_ROWS = 2
MAX_DECLARED_ROWS = 100_000_000
MIN_MLP_BATCH, MAX_MLP_BATCH = 8, 256

# Loss of each convex model type whose full-batch steps may take a large learning rate.
_SQUARED_LOSS = {"linear_regression"}

STUDY_PRESETS: dict[str, dict[str, Any]] = {
    "pilot": {"label": "Quick pilot", "rounds": 3, "local_epochs": 1, "batch_size": 32, "learning_rate": 0.5,
              "epsilon": 3.0, "delta": 1e-5, "clip_norm": 1.0, "round_deadline_s": 600},
    "standard": {"label": "Standard", "rounds": 10, "local_epochs": 2, "batch_size": 64, "learning_rate": 0.1,
                 "epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "round_deadline_s": 1800},
    "strict": {"label": "Strict privacy", "rounds": 5, "local_epochs": 1, "batch_size": 128, "learning_rate": 0.1,
               "epsilon": 0.5, "delta": 1e-6, "clip_norm": 0.5, "round_deadline_s": 1800},
}


def declared_sizes(sizes: Iterable[Any]) -> list[int]:
    """The hospitals' declared training-set sizes, checked (at least one, whole numbers)."""
    out = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or not MIN_DECLARED_ROWS <= s <= MAX_DECLARED_ROWS:
            raise SpecError(f"a declared data set size must be a whole number of rows between {MIN_DECLARED_ROWS} and "
                            f"{MAX_DECLARED_ROWS}, got {s!r}")
        out.append(s)
    if not out:
        raise SpecError('"auto" settings need the hospitals\' expected data set sizes (rows), e.g. 120, 300, 80')
    return out


def auto_settings(sizes: Iterable[Any], model_type: str) -> dict[str, Any]:
    """rounds, local_epochs, batch_size, learning_rate and clip_norm for ``model_type`` from the
    declared sizes (see the module docstring)."""
    n = declared_sizes(sizes)
    if model_type not in MODEL_TYPES:
        raise SpecError(f"model type {model_type!r} is not in the registry; choose one of {', '.join(MODEL_TYPES)}")
    if MODEL_TYPES[model_type]["mlp"]:
        batch = max(MIN_MLP_BATCH, min(MAX_MLP_BATCH, min(n) // 4))
        return {"rounds": 10, "local_epochs": 2, "batch_size": batch, "learning_rate": 0.5, "clip_norm": 1.0}
    lr = 1.0 if model_type in _SQUARED_LOSS else 2.0
    return {"rounds": 10, "local_epochs": 1, "batch_size": FULL_BATCH, "learning_rate": lr, "clip_norm": 1.0}


def scaled_preset(key: str, sizes: Iterable[Any] | None) -> dict[str, Any]:
    """A preset with its batch capped at a quarter of the smallest declared size (at least 1)."""
    if key not in STUDY_PRESETS:
        raise SpecError(f"preset {key!r} does not exist; choose one of {', '.join(STUDY_PRESETS)} or auto")
    preset = dict(STUDY_PRESETS[key])
    n = declared_sizes(sizes) if sizes else []
    if n:
        preset["batch_size"] = max(1, min(preset["batch_size"], min(n) // 4))
    return preset


AUTO_FIELDS = ("rounds", "local_epochs", "batch_size", "learning_rate")


def apply_auto(fields: dict[str, Any], privacy: Any, sizes: Any, model_type: Any,
               settings: str = "auto") -> tuple[dict[str, Any], Any]:
    """The API's ``"settings": "auto"`` (or a preset name): (fields with rounds, local_epochs,
    batch_size and learning_rate chosen, privacy with clip_norm chosen). A value the request gave
    for one of them is an error (the setting chooses it), as is, for "auto", a missing list of
    declared sizes (a preset without sizes keeps its own batch)."""
    given = [k for k in AUTO_FIELDS if fields.get(k) is not None]
    if isinstance(privacy, dict) and privacy.get("clip_norm") is not None:
        given.append("privacy.clip_norm")
    if given:
        raise SpecError(f'"settings": "{settings}" chooses {", ".join(given)} itself from the declared data set '
                        'sizes; leave them out, or use "settings": "manual"')
    if settings == "auto":
        if not isinstance(sizes, list):
            raise SpecError('"settings": "auto" needs "dataset_sizes": the expected rows of each hospital, '
                            "e.g. [120, 300, 80]")
        chosen = auto_settings(sizes, model_type if isinstance(model_type, str) else "")
    else:
        chosen = scaled_preset(settings, sizes)
    out = {**fields, **{k: chosen[k] for k in AUTO_FIELDS}}
    return out, ({**privacy, "clip_norm": chosen["clip_norm"]} if isinstance(privacy, dict) else privacy)
