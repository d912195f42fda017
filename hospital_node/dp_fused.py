"""DP-SGD for the registry's models in a few matrix products (grad_sample_mode ``fused``).

The mechanism is Opacus' DPOptimizer step, term for term, on the same Poisson batches:

* per-sample gradient of each sample's own loss (Opacus' ``loss_reduction="mean"``);
* each sample's whole gradient clipped to L2 norm <= C with factor min(1, C / (norm + 1e-6));
* the clipped gradients summed, Gaussian noise of std sigma*C added to each parameter by
  Opacus' own noise function (``_generate_noise``, same generator, same parameter order);
* the sum divided by the expected batch size, then a plain SGD step.

What differs is only how the per-sample norms are found. The registry's models are stacks of
Linear layers with ReLU between them, where one sample's weight gradient is the outer product
delta_i a_i^T of the gradient at the layer's output and the layer's input. Its squared norm is
|delta_i|^2 |a_i|^2, and the clipped sum over the batch is (c * delta)^T a: one matrix product
per layer, instead of materialising every per-sample gradient and running Opacus' Python loop
over parameters (several times faster per step than Opacus "ew": ``bench/bench_dp_overhead.py``,
numbers in docs/benchmarks.md).

Sampling (Opacus' UniformWithReplacementSampler), sigma (Opacus' get_noise_multiplier) and
accounting (Opacus' RDP accountant) are unchanged. ``trainer.matches_opacus`` runs the same
training through Opacus' "ew" engine and this one from the same seed and returns the largest
difference of the trained weights; the node runs it at start-up and uses Opacus itself if it is
not below SELF_CHECK_TOLERANCE.
"""

from __future__ import annotations

import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from .networks import LinearModel, MLPModel

# float32 rounding between the two computations of the same step; a different mechanism (another
# clip, another noise draw, a missed sample) moves weights by orders of magnitude more
SELF_CHECK_TOLERANCE = 1e-4


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers in order, if it is one of the registry's shapes (a Linear
    model, or Linear (ReLU Linear)* ending in one output); otherwise a ValueError."""
    inner = getattr(model, "_module", model)
    leaves = [m for m in inner.modules() if not list(m.children())]
    kinds = ["L" if isinstance(m, nn.Linear) else "R" if isinstance(m, nn.ReLU) else "?" for m in leaves]
    shape_ok = (type(inner) in (LinearModel, MLPModel) and kinds and kinds[0] == "L"
                and all(k == ("L" if i % 2 == 0 else "R") for i, k in enumerate(kinds)) and kinds[-1] == "L"
                and leaves[-1].out_features == 1 and all(m.bias is not None for m in leaves if isinstance(m, nn.Linear)))
    if not shape_ok:
        raise ValueError(f"grad_sample_mode 'fused' supports the registry's linear and MLP models only "
                         f"(got {type(inner).__name__} with layers {[type(m).__name__ for m in leaves]}); "
                         f"use an Opacus mode such as 'ew'")
    return [m for m in leaves if isinstance(m, nn.Linear)]


class FusedDPSGD:
    """One DP-SGD step per call on ``model`` (updated in place)."""

    def __init__(self, model: nn.Module, *, task: str, clip_norm: float, noise_multiplier: float,
                 learning_rate: float, expected_batch_size: int):
        if expected_batch_size < 1:
            raise ValueError(f"expected batch size must be >= 1, got {expected_batch_size}")
        self.layers = linear_layers(model)
        self.binary = task == "binary_classification"
        self.clip = float(clip_norm)
        self.std = float(noise_multiplier) * self.clip
        self.lr = float(learning_rate)
        self.expected_batch_size = int(expected_batch_size)

    @torch.no_grad()
    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        layers = self.layers
        inputs, pre = [], []
        a = xb
        for i, lin in enumerate(layers):
            inputs.append(a)
            z = torch.addmm(lin.bias, a, lin.weight.t())
            pre.append(z)
            a = z.clamp_min(0) if i < len(layers) - 1 else z
        out = a.squeeze(-1)
        # d(loss of sample i)/d(output i): BCE-with-logits and squared error, per sample
        d = (torch.sigmoid(out) - yb) if self.binary else 2.0 * (out - yb)
        deltas = [d.unsqueeze(-1)]  # gradient at each layer's output, last layer first
        for i in range(len(layers) - 1, 0, -1):
            deltas.append((deltas[-1] @ layers[i].weight) * (pre[i - 1] > 0))  # ReLU'(z) as autograd takes it
        deltas.reverse()
        # squared norm of sample i's whole gradient: sum over layers |delta_i|^2 (|a_i|^2 + 1)
        sq = torch.zeros(xb.shape[0], dtype=xb.dtype)
        for a_in, dl in zip(inputs, deltas):
            sq.add_((dl * dl).sum(1).mul_((a_in * a_in).sum(1).add_(1.0)))
        factor = sq.sqrt_().add_(1e-6).reciprocal_().mul_(self.clip).clamp_(max=1.0).unsqueeze(1)
        for lin, a_in, dl in zip(layers, inputs, deltas):
            cd = dl * factor
            for p, summed in ((lin.weight, cd.t() @ a_in), (lin.bias, cd.sum(0))):
                summed.add_(_generate_noise(std=self.std, reference=summed)).div_(self.expected_batch_size)
                p.add_(summed, alpha=-self.lr)

