"""Differentially private local training (Opacus DP-SGD) and privacy accounting.

Accounting model (per study, per hospital):
  * one noise multiplier sigma, computed once at the first job so that the planned
    ``rounds`` jobs end at <= min(study epsilon, hospital cap);
  * history = [(sigma, sample_rate, steps), ...], one entry per trained job, kept in the
    ledger; the Opacus accountant is rebuilt from it, so spend composes across rounds
    and survives restarts;
  * before a job, the epsilon the job would bring the total to is computed; over the
    budget -> refuse, nothing trained, nothing recorded.

Sampling: Opacus Poisson sampling as ``make_private(poisson_sampling=True)`` realises it,
i.e. sample_rate = 1 / ceil(n_train / batch_size) (= batch_size / n_train when
batch_size divides n_train) and ceil(n_train / batch_size) steps per epoch. The same
rate is used to plan sigma and to account, so the reported epsilon is exactly what
the accountant says for what was run.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import opacus
import torch
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from torch import nn

from fedproto import privacy as fedproto_privacy
from fedproto import statistics as fedproto_statistics
from fedproto.privacy import FULL_BATCH, steps_per_epoch
from fedproto.study import StudyConfig

from .config import GRAD_SAMPLE_MODES
from .dp_fused import FusedDPSGD
from .errors import BudgetExceeded
from .networks import build_model, flatten, initial_model, unflatten_into

# Known, understood warnings that would otherwise repeat on every job: secure_mode needs
# torchcsprng (not available for this torch; noise comes from torch's generator seeded from
# os.urandom, see docs/node.md), and the full-backward-hook note is Opacus' hooks mode on a first
# layer whose inputs need no gradient.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
# "fused" (hospital_node.dp_fused): Opacus' DPOptimizer step in a few matrix products, the same
# weights as Opacus' "ew" from the same seed, and several times faster than "ew", the fastest Opacus
# engine (bench/bench_dp_overhead.py; numbers in docs/benchmarks.md).
DEFAULT_GRAD_SAMPLE_MODE = "fused"
EPS_TOLERANCE = 1e-9
ACCOUNTANT_VERSION = opacus.__version__

History = list[tuple[float, float, int]]


class TrainingInterrupted(Exception):
    """Training was abandoned between steps (shutdown requested); nothing was spent."""


# ----------------------------------------------------------------------------- accounting


# The Poisson rate Opacus uses for a loader of ceil(n/batch_size) batches (shared with the platform).
sample_rate_for = fedproto_privacy.sample_rate


def job_steps(n_train: int, batch_size: int, local_epochs: int) -> int:
    return int(local_epochs) * steps_per_epoch(n_train, batch_size)


def make_accountant(name: str, history: Iterable[Iterable[float]] = ()):
    """A fresh Opacus accountant (``rdp`` or ``prv``) with ``history`` loaded."""
    acc = create_accountant(mechanism=name)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return acc


@functools.lru_cache(maxsize=1024)
def _rdp_of_entry(noise_multiplier: float, sample_rate: float, steps: int) -> np.ndarray:
    """RDP curve of one history entry at Opacus' default orders (read-only, cached: a study's
    entries repeat, and computing a curve is most of the cost of an epsilon query)."""
    rdp = np.asarray(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                                              orders=RDPAccountant.DEFAULT_ALPHAS))
    rdp.setflags(write=False)
    return rdp


def epsilon_of(history: Iterable[Iterable[float]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composed ``history`` at ``delta`` (0.0 for an empty history).

    For ``rdp`` this is Opacus' RDPAccountant.get_privacy_spent step for step (the same curves,
    summed in history order, converted by the same function), with each entry's curve cached;
    tests check it equals a fresh Opacus accountant exactly."""
    history = [(float(s), float(q), int(n)) for s, q, n in history]
    if not history:
        return 0.0
    if accountant == "rdp":
        rdp = sum([_rdp_of_entry(*entry) for entry in history])
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)
    return float(make_accountant(accountant, history).get_epsilon(delta=delta))


@dataclass(frozen=True)
class NoisePlan:
    noise_multiplier: float
    sample_rate: float
    steps_per_job: int
    target_epsilon: float
    n_train: int
    baseline_steps: int = 0  # the local-only baseline's steps reserved in this plan (0: none)


def effective_epsilon_cap(study: StudyConfig, hospital_max_epsilon: float | None) -> float:
    eps = study.privacy.epsilon
    return eps if hospital_max_epsilon is None else min(eps, float(hospital_max_epsilon))


def plan_noise(study: StudyConfig, n_train: int, hospital_max_epsilon: float | None = None, *,
               baseline: bool = False) -> NoisePlan:
    """sigma such that ``rounds`` jobs of ``local_epochs`` epochs end at <= the effective cap; with
    ``baseline``, such that those jobs and the local-only baseline (the same number of steps at the
    same sigma and rate, ``train_local_only``) end there together."""
    q = sample_rate_for(n_train, study.batch_size)
    per_job = job_steps(n_train, study.batch_size, study.local_epochs)
    target = effective_epsilon_cap(study, hospital_max_epsilon)
    runs = 2 if baseline else 1
    prefix = statistics_prefix(study, hospital_max_epsilon)
    if prefix:
        sigma = _noise_multiplier_after(prefix, target, study.privacy.delta, q, runs * study.rounds * per_job,
                                        study.privacy.accountant)
    else:
        sigma = _noise_multiplier(target, study.privacy.delta, q, runs * study.rounds * per_job, study.privacy.accountant)
    return NoisePlan(sigma, q, per_job, target, int(n_train), baseline_steps=study.rounds * per_job if baseline else 0)


def statistics_prefix(study: StudyConfig, hospital_max_epsilon: float | None) -> tuple[tuple[float, float, int], ...]:
    """The accountant entries spent before training: the statistics round's Gaussian mechanism
    (fedproto.statistics.spend_entry) when the study has one, else none. The plan reserves them, so
    statistics, jobs and baseline together end at the effective cap."""
    if not fedproto_statistics.enabled(study.schema) or study.privacy.distributed:
        return ()
    cap = effective_epsilon_cap(study, hospital_max_epsilon)
    return (fedproto_statistics.spend_entry(study.schema, cap, study.privacy.delta),)


@functools.lru_cache(maxsize=256)
def _noise_multiplier_after(prefix: tuple[tuple[float, float, int], ...], target_epsilon: float, delta: float,
                            sample_rate: float, steps: int, accountant: str) -> float:
    """The smallest sigma (to 1e-4 relative, rounded up) such that ``prefix`` and ``steps`` DP-SGD
    steps at ``sample_rate`` compose to <= ``target_epsilon`` (bisection on the same epsilon_of
    the budget check uses)."""
    def eps(sigma: float) -> float:
        return epsilon_of([*prefix, (sigma, sample_rate, steps)], delta, accountant)

    if epsilon_of(prefix, delta, accountant) >= target_epsilon:
        raise BudgetExceeded(f"the statistics round alone spends the whole budget of {target_epsilon:g}")
    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise BudgetExceeded(f"no noise multiplier fits the budget of {target_epsilon:g} after the statistics round")
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi


@functools.lru_cache(maxsize=256)
def _noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus' search for sigma (dozens of accountant evaluations), memoised: the node plans while it
    waits during recruitment, so the first job finds it done."""
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant))


def check_budget(study: StudyConfig, history: History, plan: NoisePlan,
                 hospital_max_epsilon: float | None) -> tuple[float, float]:
    """Return (epsilon after this job, epsilon before); raise BudgetExceeded naming both limits."""
    delta, acc = study.privacy.delta, study.privacy.accountant
    before = epsilon_of(history, delta, acc)
    after = epsilon_of([*history, (plan.noise_multiplier, plan.sample_rate, plan.steps_per_job)], delta, acc)
    budget = study.privacy.epsilon
    if after > budget + EPS_TOLERANCE:
        raise BudgetExceeded(f"training this job would bring epsilon to {after:.4f} (now {before:.4f}), "
                             f"over the study budget of {budget:g} (delta={delta:g})")
    if hospital_max_epsilon is not None and after > float(hospital_max_epsilon) + EPS_TOLERANCE:
        raise BudgetExceeded(f"training this job would bring epsilon to {after:.4f} (now {before:.4f}), "
                             f"over this hospital's cap max_epsilon={float(hospital_max_epsilon):g} "
                             f"(delta={delta:g})")
    return after, before


# ----------------------------------------------------------------------------- training


def _criterion(task: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if task == "binary_classification" else nn.MSELoss()


def _secure_reseed(seed: int | None) -> torch.Generator:
    """DP noise and Poisson sampling must not be predictable from the public study seed."""
    s = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed)
    torch.manual_seed(s)
    g = torch.Generator()
    g.manual_seed(s)
    return g


def dp_train(model: nn.Module, X: np.ndarray, y: np.ndarray, *, task: str, epochs: int, batch_size: int,
             learning_rate: float, noise_multiplier: float, clip_norm: float,
             grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE, seed: int | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[nn.Module, int]:
    """DP-SGD on (X, y) starting from ``model`` (copied). Returns (trained plain module, steps run)."""
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}")
    gen = _secure_reseed(seed)
    work = build_model_like(model)
    work.train()
    Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    batch_size = len(Xt) if int(batch_size) == FULL_BATCH else int(batch_size)  # full batch: sampling rate 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, yt), batch_size=int(batch_size),
                                         generator=gen)
    if grad_sample_mode == "fused":
        # Opacus' Poisson loader exactly as make_private builds it (sampler, rate, generator) and
        # DPOptimizer's expected batch size; the step itself is hospital_node.dp_fused.
        dp_loader = DPDataLoader.from_data_loader(loader)
        fused = FusedDPSGD(work, task=task, clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                           learning_rate=learning_rate,
                           expected_batch_size=int(len(Xt) * (1 / len(loader))))
        step = fused.step
    else:
        dp_model, step = _opacus_step(work, loader, task, learning_rate, noise_multiplier, clip_norm,
                                      grad_sample_mode)
        dp_loader = step.loader
    steps = 0
    # Opacus' Poisson batch sampler (UniformWithReplacementSampler: each row in with probability
    # q, drawn from ``gen``) picks the rows; they are read from the tensors in one indexing op
    # rather than row by row through the DataLoader's fetch-and-collate (several times faster per
    # epoch). Same batches, same accounting.
    sampler = dp_loader.batch_sampler
    for _ in range(int(epochs)):
        for idx in sampler:
            if should_stop is not None and should_stop():
                raise TrainingInterrupted("shutdown requested during training")
            step(Xt[idx], yt[idx])
            steps += 1
    if grad_sample_mode == "fused":  # ``work`` is a plain module (nothing wrapped or hooked)
        return work, steps
    trained = build_model_like(model)
    inner = getattr(dp_model, "_module", dp_model)
    trained.load_state_dict({k: v.detach().clone() for k, v in inner.state_dict().items()})
    return trained, steps


class _OpacusStep:
    """One DP-SGD step through Opacus' GradSampleModule and DPOptimizer (make_private)."""

    def __init__(self, dp_model, dp_opt, crit, loader, grad_sample_mode: str):
        self.model, self.opt, self.crit, self.loader, self.mode = dp_model, dp_opt, crit, loader, grad_sample_mode

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        self.opt.zero_grad()
        if len(xb) == 0 and self.mode == "ew":
            # Poisson sampling can draw an empty batch; the step must still add the noise.
            # Expanded weights refuse a batch of 0, so give the optimizer empty per-sample grads.
            for p in self.opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        else:
            self.crit(self.model(xb), yb).backward()
        self.opt.step()


def _opacus_step(work: nn.Module, loader, task: str, learning_rate: float, noise_multiplier: float,
                 clip_norm: float, grad_sample_mode: str) -> tuple[nn.Module, _OpacusStep]:
    opt = torch.optim.SGD(work.parameters(), lr=float(learning_rate))
    crit = _criterion(task)
    engine = opacus.PrivacyEngine(accountant="rdp")
    kw = dict(module=work, optimizer=opt, data_loader=loader, noise_multiplier=float(noise_multiplier),
              max_grad_norm=float(clip_norm), poisson_sampling=True, grad_sample_mode=grad_sample_mode)
    if grad_sample_mode == "ghost":
        dp_model, dp_opt, crit, dp_loader = engine.make_private(criterion=crit, **kw)
    else:
        dp_model, dp_opt, dp_loader = engine.make_private(**kw)
    return dp_model, _OpacusStep(dp_model, dp_opt, crit, dp_loader, grad_sample_mode)


def build_model_like(model: nn.Module) -> nn.Module:
    """A fresh, unwrapped copy of ``model`` (same class and weights)."""
    inner = getattr(model, "_module", model)
    clone = copy.deepcopy(inner)
    for p in clone.parameters():
        p.requires_grad_(True)
    return clone


@dataclass
class JobResult:
    update: np.ndarray  # float64, trained - global, param_shapes order
    model: nn.Module
    steps: int


def train_job(study: StudyConfig, global_model: nn.Module, X_train: np.ndarray, y_train: np.ndarray,
              plan: NoisePlan, *, grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE, seed: int | None = None,
              should_stop: Callable[[], bool] | None = None) -> JobResult:
    """One round's local training; the update is (trained - global) flattened float64."""
    trained, steps = dp_train(global_model, X_train, y_train, task=study.task, epochs=study.local_epochs,
                              batch_size=study.batch_size, learning_rate=study.learning_rate,
                              noise_multiplier=plan.noise_multiplier, clip_norm=study.privacy.clip_norm,
                              grad_sample_mode=grad_sample_mode, seed=seed, should_stop=should_stop)
    return JobResult(flatten(trained) - flatten(global_model), trained, steps)


def train_local_only(study: StudyConfig, X_train: np.ndarray, y_train: np.ndarray,
                     rounds_equivalent_epochs: int | None = None, *, hospital_max_epsilon: float | None = None,
                     noise_multiplier: float | None = None, grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
                     seed: int | None = None) -> nn.Module:
    """Local-only baseline: the study's initial model trained with DP-SGD on this hospital's data
    alone for ``rounds_equivalent_epochs`` epochs in total (default rounds * local_epochs), with the
    study's batch, learning rate and clip. ``noise_multiplier``: the sigma of the hospital's plan
    (``plan_noise(..., baseline=True)``: the federated jobs and this run share the budget); without
    it, sigma such that this run alone ends at <= the budget (what the hospital could do alone)."""
    trained, _ = local_only_run(study, X_train, y_train, rounds_equivalent_epochs,
                                hospital_max_epsilon=hospital_max_epsilon, noise_multiplier=noise_multiplier,
                                grad_sample_mode=grad_sample_mode, seed=seed)
    return trained


def local_only_run(study: StudyConfig, X_train: np.ndarray, y_train: np.ndarray,
                   rounds_equivalent_epochs: int | None = None, *, hospital_max_epsilon: float | None = None,
                   noise_multiplier: float | None = None, grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
                   seed: int | None = None, should_stop: Callable[[], bool] | None = None,
                   ) -> tuple[nn.Module, tuple[float, float, int]]:
    """train_local_only, and the run's (sigma, sample rate, steps) for the accountant."""
    epochs = int(rounds_equivalent_epochs or study.rounds * study.local_epochs)
    n = len(y_train)
    bs = study.batch_size
    q = sample_rate_for(n, bs)
    sigma = noise_multiplier
    if sigma is None:
        target = effective_epsilon_cap(study, hospital_max_epsilon)
        sigma = _noise_multiplier(target, study.privacy.delta, q, epochs * steps_per_epoch(n, bs),
                                  study.privacy.accountant)
    trained, steps = dp_train(initial_model(study), X_train, y_train, task=study.task, epochs=epochs,
                              batch_size=bs, learning_rate=study.learning_rate, noise_multiplier=float(sigma),
                              clip_norm=study.privacy.clip_norm, grad_sample_mode=grad_sample_mode, seed=seed,
                              should_stop=should_stop)
    return trained, (float(sigma), float(q), int(steps))


def matches_opacus(grad_sample_mode_reference: str = "ew", seed: int = 7) -> float:
    """Train a small MLP for two epochs with Opacus (``grad_sample_mode_reference``) and with the
    fused step (hospital_node.dp_fused) from the same seed (same Poisson batches, same noise); return
    the largest absolute difference of the trained weights (~1e-7: float rounding; the node trains
    with Opacus itself when it is not below dp_fused.SELF_CHECK_TOLERANCE)."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(96, 6)) * 2).astype(np.float32)
    y = (rng.random(96) > 0.5).astype(np.float32)
    torch.manual_seed(seed)
    start = build_model({"type": "mlp_classifier", "hidden": [8, 4]}, X.shape[1])

    def train(mode: str) -> nn.Module:
        model, _ = dp_train(start, X, y, task="binary_classification", epochs=2, batch_size=16, learning_rate=0.5,
                            noise_multiplier=0.8, clip_norm=0.5, seed=seed, grad_sample_mode=mode)
        return model

    ref = train(grad_sample_mode_reference)
    return float(np.abs(flatten(ref) - flatten(train("fused"))).max())


# ----------------------------------------------------------------------------- evaluation


def predict(model: nn.Module, X: np.ndarray) -> np.ndarray:
    inner = getattr(model, "_module", model)
    inner.eval()
    with torch.no_grad():
        return inner(torch.as_tensor(X, dtype=torch.float32)).double().numpy()


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, task: str) -> dict:
    """{"auc", "accuracy"} for binary classification (auc None if one class), {"rmse"} for regression."""
    out = predict(model, X)
    y = np.asarray(y, dtype=np.float64)
    if task == "binary_classification":
        from sklearn.metrics import accuracy_score, roc_auc_score

        auc = float(roc_auc_score(y, out)) if len(np.unique(y)) == 2 else None
        return {"auc": auc, "accuracy": float(accuracy_score(y, (out > 0).astype(np.float64)))}
    return {"rmse": float(np.sqrt(np.mean((out - y) ** 2)))}


def apply_update(model: nn.Module, mean_update: np.ndarray) -> nn.Module:
    """global(n) = global(n-1) + mean update of round n (returns a new module)."""
    new = build_model_like(model)
    return unflatten_into(new, flatten(model) + np.asarray(mean_update, dtype=np.float64))


__all__ = ["ACCOUNTANT_VERSION", "GRAD_SAMPLE_MODES", "JobResult", "NoisePlan", "TrainingInterrupted",
           "apply_update", "build_model", "check_budget", "dp_train", "effective_epsilon_cap",
           "epsilon_of", "evaluate", "job_steps", "local_only_run", "make_accountant", "matches_opacus", "plan_noise", "predict",
           "sample_rate_for", "steps_per_epoch", "train_job", "train_local_only"]
