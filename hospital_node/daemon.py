"""The node daemon: poll the platform for work and hand each item to its handler.

Loop: heartbeat, deliver anything recorded but not yet uploaded (crash recovery),
long-poll GET work, handle each item. One bad item is logged (and refused where the
protocol allows) and the loop goes on. Network errors and 5xx back off with jitter;
401/403 stop the node. First SIGTERM/SIGINT: finish or abandon the current step
cleanly and exit 0; a second signal exits at once.

The handlers live by subject: recruitment.py (invitations), keys.py (the study key),
rounds.py (training, global models, evaluation, final model); planning.py checks the
hospital's limits and plans the noise. A work item's study is parsed here, once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import time
from typing import Any, Callable

import numpy as np
import torch

from fedproto import PROTOCOL_VERSION
from fedproto.codec import DEFAULT_CODEC, get_codec
from fedproto.errors import SpecError
from fedproto.study import StudyConfig, WorkKind

from . import dp_fused, keys, recruitment, rounds, trainer
from .client import PlatformClient
from .config import NodeConfig
from .context import NodeContext
from .credentials import Credentials
from .errors import ApiError, DataError, FatalAuthError, TransientError, public_reason
from .ledger import RESUMABLE_STATES, Ledger
from .networks import build_model

log = logging.getLogger("hospital_node")

# How long an item this node cannot act on is skipped in the long-poll before it is retried.
FAILED_ITEM_RETRY_S = 30.0

StudyHandler = Callable[[NodeContext, dict[str, Any], StudyConfig], None]

# Handlers of the items about one study (the item's study, parsed; else the ledger's copy).
STUDY_HANDLERS: dict[str, StudyHandler] = {
    WorkKind.INVITATION: recruitment.on_invitation,
    WorkKind.PUBLISH_CONTEXT: keys.on_publish_context,
    WorkKind.FETCH_KEY: keys.on_fetch_key,
    WorkKind.TRAIN: rounds.on_train,
    WorkKind.EVALUATE: rounds.on_evaluate,
    WorkKind.UPLOAD_FINAL_MODEL: rounds.on_upload_final_model,
}


class _PollInterrupted(BaseException):
    """Raised from the signal handler while the node is only waiting on a long-poll."""


class Backoff:
    """Jittered exponential backoff: base * 2^k, capped, times a random factor in [0.5, 1]."""

    def __init__(self, base: float = 1.0, cap: float = 60.0):
        self.base, self.cap, self.k = base, cap, 0

    def next(self) -> float:
        d = min(self.cap, self.base * (2 ** self.k)) * random.uniform(0.5, 1.0)
        self.k = min(self.k + 1, 16)
        return d

    def reset(self) -> None:
        self.k = 0


def parse_study(raw: Any) -> StudyConfig:
    """The study of a work item; SpecError with the reason this node gives the platform."""
    version = raw.get("protocol_version", PROTOCOL_VERSION) if isinstance(raw, dict) else PROTOCOL_VERSION
    if version != PROTOCOL_VERSION:
        raise SpecError(f"protocol version {version} is not supported by this node (speaks {PROTOCOL_VERSION}); "
                        "upgrade the node")
    try:
        return StudyConfig.from_wire(raw)
    except SpecError as e:
        raise SpecError(f"invalid study configuration: {e}") from None


class Node(NodeContext):
    def __init__(self, cfg: NodeConfig, creds: Credentials, client: PlatformClient | None = None,
                 ledger: Ledger | None = None):
        super().__init__(cfg, creds, client, ledger)
        self._in_poll = False
        self._signals = 0
        self._last_heartbeat = 0.0

    # ------------------------------------------------------------------ signals

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"hospital_node: second signal, exiting now\n")
            os._exit(128 + signum)
        log.info("received %s: finishing the current step, then exiting (send it again to exit now)",
                 signal.Signals(signum).name)
        self.stop.set()
        if self._in_poll:
            raise _PollInterrupted()

    # ------------------------------------------------------------------ start-up

    def warm_up(self) -> float:
        """Pay the one-time costs before taking work, not inside the first job: TenSEAL and the
        codec, scikit-learn's metrics, and the first Opacus DP-SGD step on a throw-away model and
        random rows (no hospital data, no privacy spend, no ledger write)."""
        t0 = time.monotonic()
        _set_torch_threads()
        get_codec(DEFAULT_CODEC)
        rng = np.random.default_rng()
        X = rng.normal(size=(32, 4)).astype(np.float32)
        y = (rng.random(32) > 0.5).astype(np.float32)
        for spec in ({"type": "logistic_regression"}, {"type": "mlp_classifier", "hidden": [4]}):
            model, _ = trainer.dp_train(build_model(spec, X.shape[1]), X, y, task="binary_classification", epochs=1,
                                        batch_size=16, learning_rate=0.1, noise_multiplier=1.0, clip_norm=1.0,
                                        grad_sample_mode=self.cfg.grad_sample_mode)
            trainer.evaluate(model, X, y, "binary_classification")
        trainer.epsilon_of([(1.0, 0.25, 4)], 1e-5)
        if self.cfg.grad_sample_mode == "fused":
            self._check_fused_engine()
        took = time.monotonic() - t0
        log.info("warmed up (codec, Opacus, metrics) in %.2f s", took)
        return took

    def _check_fused_engine(self) -> None:
        """The fused DP-SGD step must train to Opacus' own weights from the same seed on this
        installation (random rows, no hospital data); if it does not, train with Opacus itself."""
        try:
            diff = trainer.matches_opacus("ew")
        except Exception as exc:  # e.g. an Opacus upgrade that changed what the check calls
            log.warning("DP-SGD engine: the check of the fused step against Opacus failed (%s: %s); training "
                        "with Opacus' 'ew' engine instead", type(exc).__name__, exc)
            self.cfg = dataclasses.replace(self.cfg, grad_sample_mode="ew")
            return
        if diff < dp_fused.SELF_CHECK_TOLERANCE:
            log.info("DP-SGD engine: fused step, checked against Opacus %s 'ew' (weights agree to %.1e)",
                     trainer.ACCOUNTANT_VERSION, diff)
            return
        log.warning("DP-SGD engine: the fused step does not reproduce Opacus %s (weights differ by %.3g, "
                    "allowed %.0e); training with Opacus' 'ew' engine instead. Set node.grad_sample_mode = "
                    "\"ew\" to silence this.", trainer.ACCOUNTANT_VERSION, diff, dp_fused.SELF_CHECK_TOLERANCE)
        self.cfg = dataclasses.replace(self.cfg, grad_sample_mode="ew")

    # ------------------------------------------------------------------ loop

    def run(self, once: bool = False) -> int:
        backoff = Backoff()
        _set_torch_threads()
        log.info("node for %s (hospital %s) polling %s", self.creds.hospital_name, self.creds.hospital_id,
                 self.cfg.platform_url)
        while not self.stop.is_set():
            try:
                self.maybe_heartbeat()
                self.resume_pending()
                items = self.poll()
                trouble = False
                for item in items:
                    if self.stop.is_set():
                        break
                    trouble |= not self.handle_safely(item)
                if trouble:
                    raise TransientError("some work items hit network errors; they will be retried")
                backoff.reset()
            except _PollInterrupted:
                break
            except TransientError as e:
                delay = backoff.next()
                log.warning("%s; retrying in %.1f s", e, delay)
                if once:
                    return 1
                self.stop.wait(delay)
                continue
            if once:
                break
        log.info("stopped cleanly")
        return 0

    def poll(self) -> list[dict]:
        self._in_poll = True
        try:
            if self.stop.is_set():
                return []
            now = time.monotonic()
            self.deferred = {k: until for k, until in self.deferred.items() if until > now}
            return self.client.work(self.cfg.poll_wait_s, skip=self.deferred)
        finally:
            self._in_poll = False

    def maybe_heartbeat(self, force: bool = False) -> dict | None:
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self.cfg.heartbeat_interval_s:
            return None
        pending = len(self.ledger.jobs(states=RESUMABLE_STATES))
        lim = self.cfg.limits
        # The node's own limits travel with each heartbeat so the portal can show what this node
        # enforces next to what is declared there (the node checks its own, whatever is declared).
        resp = self.client.heartbeat({"studies": len(self.ledger.studies()), "pending_uploads": pending,
                                      "limits": {"max_epsilon": lim.max_epsilon, "max_delta": lim.max_delta,
                                                 "max_rounds": lim.max_rounds, "allowed_models": list(lim.allowed_models),
                                                 "auto_approve": lim.auto_approve}})
        self._last_heartbeat = now
        return resp

    def resume_pending(self) -> None:
        rounds.resume_pending(self)

    def handle_safely(self, item: dict) -> bool:
        """Handle one item; never raise except FatalAuthError. False on a transient failure."""
        kind = item.get("kind") if isinstance(item, dict) else None
        try:
            self.handle(item)
            return True
        except FatalAuthError:
            raise
        except TransientError as e:
            log.warning("%s item: %s (will retry)", kind, e)
            return False
        except Exception as e:  # one bad item must not stop the node
            log.error("%s item failed: %s: %s", kind, type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
            self.defer(item, FAILED_ITEM_RETRY_S)
            if kind == WorkKind.TRAIN and "job_id" in item:
                job = self.ledger.job(item["job_id"])
                if job is None or job["state"] not in (*RESUMABLE_STATES, "uploaded"):
                    code = "data_error" if isinstance(e, (DataError, SpecError)) else "node_error"
                    try:
                        self.client.refuse(item["job_id"], code, public_reason(e)[:1000])
                    except (TransientError, ApiError) as e2:
                        log.warning("could not report the failure of job %s: %s", item["job_id"], e2)
            return True

    def handle(self, item: dict) -> None:
        """Dispatch one work item: its study is parsed here, once, and the handler gets the
        StudyConfig. A study this node cannot read declines an invitation and refuses a job."""
        kind = item.get("kind")
        if kind == WorkKind.SEAL_KEYS:
            keys.on_seal_keys(self, item)
            return
        handler = STUDY_HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            log.warning("ignoring work item of unknown kind %r", kind)
            return
        if "study" not in item:  # items that name the study only: the copy this node stored
            handler(self, item, self.known_study(int(item["study_id"])))
            return
        try:
            study = parse_study(item["study"])
        except SpecError as e:
            if kind == WorkKind.INVITATION:
                recruitment.decline_invalid(self, item, str(e))
                return
            if kind == WorkKind.TRAIN:
                rounds.refuse_invalid(self, item, str(e))
                return
            raise
        if "study_id" in item and int(item["study_id"]) != study.study_id:
            raise SpecError(f"{kind} item names study {item['study_id']} but carries study {study.study_id}")
        handler(self, item, study)


def _set_torch_threads() -> None:
    """The registry's models are small: torch's intra-op threads only spin against each other and
    against other processes on the host (jobs ran several times slower with 3 nodes on 2 cores)."""
    torch.set_num_threads(max(1, int(os.environ.get("HOSPITAL_NODE_TORCH_THREADS", "1"))))
