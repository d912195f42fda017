"""The fused DP-SGD step against Opacus itself (real Opacus, real torch; no mocks).

The fused step must be Opacus' DPOptimizer step: same per-sample clipping, same noise draws, same
scaling, on the same Poisson batches. Every check trains through both and compares weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hospital_node import dp_fused, trainer
from hospital_node.networks import build_model, flatten


def _data(n=96, n_features=5, task="binary_classification", seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, n_features)) * 2).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.float32) if task == "binary_classification" else \
        (X @ rng.normal(size=n_features)).astype(np.float32)
    return X, y


@pytest.mark.parametrize("spec,task", [
    ({"type": "logistic_regression"}, "binary_classification"),
    ({"type": "linear_regression"}, "regression"),
    ({"type": "mlp_classifier", "hidden": [8]}, "binary_classification"),
    ({"type": "mlp_classifier", "hidden": [8, 4]}, "binary_classification"),
    ({"type": "mlp_regressor", "hidden": [6]}, "regression"),
])
@pytest.mark.parametrize("reference", ["ew", "hooks"])
def test_fused_training_equals_opacus_from_the_same_seed(spec, task, reference):
    X, y = _data(task=task)
    torch.manual_seed(3)
    start = build_model(spec, X.shape[1])
    kw = dict(task=task, epochs=2, batch_size=16, learning_rate=0.3, noise_multiplier=0.7, clip_norm=0.5, seed=11)
    ref, ref_steps = trainer.dp_train(start, X, y, grad_sample_mode=reference, **kw)
    fused, steps = trainer.dp_train(start, X, y, grad_sample_mode="fused", **kw)
    assert steps == ref_steps == 2 * 6
    moved = np.abs(flatten(ref) - flatten(start)).max()
    assert moved > 1e-2  # training did something, so agreement below means something
    np.testing.assert_allclose(flatten(fused), flatten(ref), rtol=0, atol=1e-5)
    # another seed (other batches, other noise) lands far away: the tolerance separates mechanisms
    other, _ = trainer.dp_train(start, X, y, grad_sample_mode="fused", **{**kw, "seed": 12})
    assert np.abs(flatten(other) - flatten(ref)).max() > 100 * 1e-5


def _opacus_single_step(model, xb, yb, *, clip, sigma, lr, seed):
    """One step of Opacus' own DPOptimizer (ew, through the trainer's make_private path) on a fixed
    batch, expected batch size 16."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(64, xb.shape[1]),
                                                                        torch.zeros(64)), batch_size=16)
    dp_model, step = trainer._opacus_step(model, loader, "binary_classification", lr, sigma, clip, "ew")
    torch.manual_seed(seed)
    step(xb, yb)
    return flatten(dp_model._module)


@pytest.mark.parametrize("batch", [0, 1, 20])
def test_one_step_equals_opacus_including_empty_poisson_batches(batch):
    spec = {"type": "mlp_classifier", "hidden": [8, 4]}
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(batch, 6, generator=g) * 3
    yb = (torch.rand(batch, generator=g) > 0.5).float()
    torch.manual_seed(1)
    a = build_model(spec, 6)
    torch.manual_seed(1)
    b = build_model(spec, 6)
    w0 = flatten(a)
    want = _opacus_single_step(a, xb, yb, clip=0.7, sigma=1.3, lr=0.5, seed=5)
    torch.manual_seed(5)
    dp_fused.FusedDPSGD(b, task="binary_classification", clip_norm=0.7, noise_multiplier=1.3, learning_rate=0.5,
                        expected_batch_size=16).step(xb, yb)
    assert np.abs(want - w0).max() > 1e-2  # the noise alone moves every weight
    np.testing.assert_allclose(flatten(b), want, rtol=0, atol=1e-6)


def test_each_sample_is_clipped_to_the_bound():
    """Noise off: the step moves the weights by exactly the mean of the per-sample gradients, each
    clipped to norm <= C, computed by hand one sample at a time with autograd."""
    spec = {"type": "mlp_classifier", "hidden": [8, 4]}
    g = torch.Generator().manual_seed(2)
    xb = torch.randn(12, 6, generator=g) * 4
    yb = (torch.rand(12, generator=g) > 0.5).float()
    clip = 0.3
    torch.manual_seed(4)
    ref = build_model(spec, 6)
    acc = [torch.zeros_like(p) for p in ref.parameters()]
    clipped = 0
    for i in range(len(xb)):
        ref.zero_grad()
        nn.BCEWithLogitsLoss()(ref(xb[i:i + 1]), yb[i:i + 1]).backward()
        gs = [p.grad.clone() for p in ref.parameters()]
        norm = float(torch.sqrt(sum((t ** 2).sum() for t in gs)))
        clipped += norm > clip
        for a, t in zip(acc, gs):
            a += t * min(1.0, clip / (norm + 1e-6))
    assert clipped >= 6  # the bound binds for most samples
    torch.manual_seed(4)
    model = build_model(spec, 6)
    w0 = [p.detach().clone() for p in model.parameters()]
    dp_fused.FusedDPSGD(model, task="binary_classification", clip_norm=clip, noise_multiplier=0.0,
                        learning_rate=1.0, expected_batch_size=10).step(xb, yb)
    for w, p, a in zip(w0, model.parameters(), acc):
        np.testing.assert_allclose((w - p.detach()).numpy(), (a / 10).numpy(), rtol=0, atol=1e-6)


def test_models_outside_the_registry_shapes_are_refused_with_the_way_out():
    class Tanh(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))

        def forward(self, x):
            return self.layers(x).squeeze(-1)

    with pytest.raises(ValueError, match="'fused' supports the registry's linear and MLP models only.*'ew'"):
        dp_fused.linear_layers(Tanh())
    X, y = _data()
    with pytest.raises(ValueError, match="'fused' supports"):
        trainer.dp_train(Tanh(), X[:, :4], y, task="binary_classification", epochs=1, batch_size=16,
                         learning_rate=0.1, noise_multiplier=1.0, clip_norm=1.0, grad_sample_mode="fused")


def test_self_check_agrees_with_opacus():
    assert trainer.matches_opacus("ew") < dp_fused.SELF_CHECK_TOLERANCE
