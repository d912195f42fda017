"""The demo study's definition: its hospitals, hyper-parameters and study settings.

Plain data (no Django): the `demo` command creates the study from it, and
bench/bench_round_overhead.py trains the same steps in one process for its baseline.
"""

from __future__ import annotations

from fedproto.codec import DEFAULT_CODEC

HOSPITALS = ["St Mary General", "Northfield University Hospital", "Riverside Clinic"]

# Study hyper-parameters tuned for DP at epsilon 1 on ~150 training rows per hospital.
DEMO_HYPER = {"local_epochs": 5, "batch_size": 16, "learning_rate": 0.1, "clip_norm": 1.0}
DEMO_DELTA = 1e-5
DEMO_SEED = 20261122


def demo_privacy(epsilon: float) -> dict:
    """The demo study's privacy settings for a budget of `epsilon` per hospital."""
    return {"epsilon": epsilon, "delta": DEMO_DELTA, "clip_norm": DEMO_HYPER["clip_norm"]}


def demo_study_fields(*, schema: dict, rounds: int, local_epochs: int, epsilon: float) -> dict:
    """Keyword arguments for studies.services.study_create (besides consortium, hospitals, actor)."""
    return {
        "name": "Breast cancer malignancy (demo)",
        "purpose": "Predict malignancy of breast masses from digitised FNA features.",
        "schema": schema, "model_spec": {"type": "logistic_regression"},
        "rounds": rounds, "local_epochs": local_epochs, "batch_size": DEMO_HYPER["batch_size"],
        "learning_rate": DEMO_HYPER["learning_rate"], "privacy": demo_privacy(epsilon),
        "encryption": {"codec": DEFAULT_CODEC}, "quorum": 2, "round_deadline_s": 120, "seed": DEMO_SEED,
    }
