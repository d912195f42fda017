"""The node daemon: poll the platform for work and handle each item.

Loop: heartbeat, deliver anything recorded but not yet uploaded (crash recovery),
long-poll GET work, handle each item. One bad item is logged (and refused where the
protocol allows) and the loop goes on. Network errors and 5xx back off with jitter;
401/403 stop the node. First SIGTERM/SIGINT: finish or abandon the current step
cleanly and exit 0; a second signal exits at once.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fedproto import PROTOCOL_VERSION
from fedproto.codec import DEFAULT_CODEC
from fedproto.errors import CodecError, SpecError
from fedproto.privacy import validate_privacy
from fedproto.schema import validate_schema
from fedproto.specs import n_params, validate_model_spec
from fedproto.wire import pack_parts, unpack_parts

from . import dp_fused, trainer
from .client import PlatformClient
from .config import NodeConfig
from .credentials import Credentials, open_sealed, seal_for, write_atomic
from .data import Dataset, load_study_data
from .errors import ApiError, BudgetExceeded, DataError, FatalAuthError, TransientError
from .ledger import RESUMABLE_STATES, Ledger, config_sha256
from .networks import flatten, initial_model, model_bytes, model_from_flat, model_sha256

log = logging.getLogger("hospital_node")


class _PollInterrupted(BaseException):
    """Raised from the signal handler while the node is only waiting on a long-poll."""


class Refuse(Exception):
    """This job must be refused with ``code`` (nothing trained, nothing recorded)."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


# How long an item this node cannot act on is skipped in the long-poll before it is retried.
FAILED_ITEM_RETRY_S = 30.0
SEAL_BATCH = 32  # sealed keys per request
PENDING_INVITATION_RECHECK_S = 300.0


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


# ----------------------------------------------------------------------------- codec access


def _codec(name: str):
    from fedproto.codec import get_codec  # imported lazily: the codec pulls in TenSEAL

    return get_codec(name)


def public_params_sha256(public: bytes) -> str:
    try:
        from fedproto import codec as codec_mod

        fn = getattr(codec_mod, "public_params_sha256", None)
        if fn is not None:
            return fn(public)
    except ImportError:
        pass
    return hashlib.sha256(public).hexdigest()


def study_codec_name(study: dict) -> str:
    return (study.get("encryption") or {}).get("codec", DEFAULT_CODEC)


# ----------------------------------------------------------------------------- study checks


def check_local_limits(study: dict, cfg: NodeConfig, *, for_training: bool = False) -> list[str]:
    """Reasons why ``study`` does not fit this hospital's limits (empty list if it fits).

    For a training job (``for_training``) a study epsilon above the hospital's max_epsilon is
    not a refusal by itself: the node plans its noise for min(study epsilon, max_epsilon) and
    the budget check refuses the job that would cross the cap."""
    reasons = []
    lim = cfg.limits
    if study.get("protocol_version", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        reasons.append(f"protocol version {study.get('protocol_version')} is not supported by this node "
                       f"(speaks {PROTOCOL_VERSION}); upgrade the node")
    try:
        schema = validate_schema(study.get("schema"))
        validate_model_spec(study.get("model"), schema["task"])
        priv = validate_privacy(study.get("privacy"))
        enc = study.get("encryption") or {}
        _codec(enc.get("codec", DEFAULT_CODEC)).validate_config(enc)
    except SpecError as e:
        return reasons + [f"invalid study configuration: {e}"]
    mtype = study["model"]["type"]
    if mtype not in lim.allowed_models:
        reasons.append(f"model type {mtype} is not in this hospital's allowed_models ({', '.join(lim.allowed_models)})")
    if priv["epsilon"] > lim.max_epsilon and not for_training:
        reasons.append(f"study epsilon {priv['epsilon']:g} exceeds this hospital's max_epsilon {lim.max_epsilon:g}")
    if priv["delta"] > lim.max_delta:
        reasons.append(f"study delta {priv['delta']:g} exceeds this hospital's max_delta {lim.max_delta:g}")
    rounds = study.get("rounds")
    if not isinstance(rounds, int) or rounds > lim.max_rounds:
        reasons.append(f"study rounds {rounds!r} exceeds this hospital's max_rounds {lim.max_rounds}")
    for key in ("local_epochs", "batch_size"):
        v = study.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            reasons.append(f"study {key} must be a positive integer, got {v!r}")
    lr = study.get("learning_rate")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        reasons.append(f"study learning_rate must be a positive number, got {lr!r}")
    return reasons


# ----------------------------------------------------------------------------- the node


class Node:
    def __init__(self, cfg: NodeConfig, creds: Credentials, client: PlatformClient | None = None,
                 ledger: Ledger | None = None):
        self.cfg = cfg
        self.creds = creds
        self.client = client or PlatformClient(cfg.platform_url, creds.node_token, cfg.request_timeout_s)
        self.ledger = ledger or Ledger(cfg.ledger)
        self.stop = threading.Event()
        self._in_poll = False
        self._signals = 0
        self._data_cache: dict[int, tuple[tuple, Dataset]] = {}
        self._last_heartbeat = 0.0
        self._logged_pending: set[int] = set()
        self._deferred: dict[str, float] = {}  # item key -> monotonic time until which it is skipped
        (cfg.work_dir / "frames").mkdir(parents=True, exist_ok=True)

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

    # ------------------------------------------------------------------ loop

    def warm_up(self) -> float:
        """Pay the one-time costs before taking work, not inside the first job: TenSEAL and the
        codec, scikit-learn's metrics, and the first Opacus DP-SGD step (0.3-0.6 s, measured) on a
        throw-away model and random rows (no hospital data, no privacy spend, no ledger write)."""
        t0 = time.monotonic()
        _set_torch_threads()
        from .networks import build_model

        _codec(DEFAULT_CODEC)
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
            diff = dp_fused.matches_opacus("ew")
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
            self._deferred = {k: until for k, until in self._deferred.items() if until > now}
            return self.client.work(self.cfg.poll_wait_s, skip=self._deferred)
        finally:
            self._in_poll = False

    def maybe_heartbeat(self, force: bool = False) -> dict | None:
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self.cfg.heartbeat_interval_s:
            return None
        pending = len(self.ledger.jobs(states=RESUMABLE_STATES))
        resp = self.client.heartbeat({"studies": len(self.ledger.studies()), "pending_uploads": pending})
        self._last_heartbeat = now
        return resp

    def defer(self, item: dict, seconds: float) -> None:
        """Ask the platform not to return this item for a while (it cannot be acted on now)."""
        key = item.get("key") if isinstance(item, dict) else None
        if isinstance(key, str):
            self._deferred[key] = time.monotonic() + seconds

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
            if kind == "train" and "job_id" in item:
                job = self.ledger.job(item["job_id"])
                if job is None or job["state"] not in (*RESUMABLE_STATES, "uploaded"):
                    code = "data_error" if isinstance(e, (DataError, SpecError)) else "node_error"
                    try:
                        self.client.refuse(item["job_id"], code, f"{type(e).__name__}: {e}"[:1000])
                    except (TransientError, ApiError) as e2:
                        log.warning("could not report the failure of job %s: %s", item["job_id"], e2)
            return True

    def handle(self, item: dict) -> None:
        kind = item.get("kind")
        handler = {"invitation": self.on_invitation, "publish_context": self.on_publish_context,
                   "seal_keys": self.on_seal_keys, "fetch_key": self.on_fetch_key, "train": self.on_train,
                   "evaluate": self.on_evaluate, "upload_final_model": self.on_upload_final_model}.get(kind)
        if handler is None:
            log.warning("ignoring work item of unknown kind %r", kind)
            return
        handler(item)

    # ------------------------------------------------------------------ data

    def dataset(self, study: dict) -> Dataset:
        path = self.cfg.data_csv
        try:
            st = path.stat()
            key = (str(path), st.st_mtime_ns, st.st_size, config_sha256(study))
        except FileNotFoundError:
            raise DataError(f"data file {path} does not exist: set [data] csv in {self.cfg.path}") from None
        hit = self._data_cache.get(int(study["id"]))
        if hit and hit[0] == key:
            return hit[1]
        ds = load_study_data(study, path)
        self._data_cache[int(study["id"])] = (key, ds)
        return ds

    # ------------------------------------------------------------------ invitation

    def on_invitation(self, item: dict) -> None:
        study = item["study"]
        sid = int(study["id"])
        reasons = check_local_limits(study, self.cfg)
        if not reasons:
            try:
                self.dataset(study)
            except (DataError, SpecError) as e:
                reasons.append(f"local data does not match the study schema: {e}")
        if reasons:
            reason = "; ".join(reasons)
            log.info("study %s (%s): declining: %s", sid, study.get("name", ""), reason)
            self.client.decision(sid, "decline", reason)
            self.ledger.remember_study(study, invitation_state="declined")
        elif self.cfg.limits.auto_approve:
            log.info("study %s (%s): fits local limits (epsilon %g, %s rounds, model %s): approving",
                     sid, study.get("name", ""), study["privacy"]["epsilon"], study["rounds"], study["model"]["type"])
            resp = self.client.decision(sid, "approve", "fits this hospital's limits (auto_approve)")
            self.ledger.remember_study(study, invitation_state="approved")
            if isinstance(resp, dict) and resp.get("key_custodian") is False:
                self._plan_ahead(sid)  # idle until the custodian has generated and sealed the key
        else:
            if sid not in self._logged_pending:
                log.info("study %s (%s): fits local limits; waiting for the hospital admin to approve it in the "
                         "portal (auto_approve is off)", sid, study.get("name", ""))
                self._logged_pending.add(sid)
            self.ledger.remember_study(study, invitation_state="pending_admin")
            # Nothing to do until the admin decides; the decision makes other items appear.
            self.defer(item, PENDING_INVITATION_RECHECK_S)

    def _plan_ahead(self, sid: int) -> None:
        """Compute the study's noise plan (memoised in trainer) while this node waits for others in
        recruitment, not inside the first job: a non-custodian right after approving (it waits
        for the custodian's key), the custodian once it has sealed the keys (it waits for the
        acknowledgements), and after fetching a key if not done yet. Pure arithmetic: no ledger
        write, no spend."""
        study = self.ledger.study_config(sid)
        try:
            trainer.plan_noise(study, self.dataset(study).n_train, self.cfg.limits.max_epsilon)
        except Exception as e:  # noqa: BLE001 - the first job plans again and reports any problem
            log.debug("study %s: planning ahead failed (%s); the first job will plan", sid, e)

    # ------------------------------------------------------------------ keys

    def on_publish_context(self, item: dict) -> None:
        study = item["study"]
        sid = int(study["id"])
        self.ledger.remember_study(study)
        codec = _codec(study_codec_name(study))
        secret = self.ledger.secret(sid)
        if secret is None:
            secret = codec.generate_secret(study["encryption"])
            public = codec.public_params(secret)
            # stored before publishing: a crash after the POST must not produce a second secret
            self.ledger.set_secret(sid, secret, public_params_sha256(public))
        public = codec.public_params(secret)
        self.client.post_context(sid, codec.name, public)
        log.info("study %s: published the encryption context (%s, params sha256 %s)", sid, codec.name,
                 public_params_sha256(public)[:16])

    def on_seal_keys(self, item: dict) -> None:
        sid = int(item["study_id"])
        secret = self.ledger.secret(sid)
        if secret is None:
            raise RuntimeError(f"study {sid}: asked to seal keys but this node holds no secret for it "
                               "(it did not publish the context)")
        keys = [{"hospital_id": r["hospital_id"], "sealed": seal_for(r["public_key"], secret)}
                for r in item.get("recipients", []) if int(r["hospital_id"]) != self.creds.hospital_id]
        # In batches: one request with hundreds of sealed keys (~63 KB each) would exceed the
        # platform's request size limit; the platform stores each recipient's key idempotently.
        for i in range(0, len(keys), SEAL_BATCH):
            self.client.post_sealed_keys(sid, keys[i:i + SEAL_BATCH])
        log.info("study %s: sealed the study key for %d hospital(s)", sid, len(keys))
        self._plan_ahead(sid)

    def on_fetch_key(self, item: dict) -> None:
        sid = int(item["study_id"])
        if self.ledger.study(sid) is None and isinstance(item.get("study"), dict) and int(item["study"].get("id", -1)) == sid:
            # The hospital admin approved the study in the portal before this node saw the
            # invitation: the item carries the study config (training still checks local limits).
            self.ledger.remember_study(item["study"], invitation_state="approved")
        self.fetch_key(sid)
        self._plan_ahead(sid)

    def fetch_key(self, sid: int) -> bytes:
        if self.ledger.study(sid) is None:
            raise RuntimeError(f"study {sid} is unknown to this node (no invitation or job seen yet); "
                               "the key will be fetched with its first job")
        sealed = self.client.get_sealed_key(sid)
        secret = open_sealed(self.creds.private_key, sealed["sealed"])
        ctx = self.client.get_context(sid)
        published = base64.b64decode(ctx["public_params"], validate=True)
        want = ctx.get("sha256") or public_params_sha256(published)
        if public_params_sha256(published) != want:
            raise CodecError(f"study {sid}: the platform's context sha256 does not match its public params")
        config = self.ledger.study_config(sid)
        codec = _codec(ctx.get("codec") or study_codec_name(config))
        mine = public_params_sha256(codec.public_params(secret))
        if mine != want:
            raise CodecError(f"study {sid}: the sealed key's parameters (sha256 {mine[:16]}) do not match the "
                             f"study context (sha256 {want[:16]}); refusing the key")
        self.ledger.set_secret(sid, secret, mine)
        self.client.key_ack(sid, mine)
        log.info("study %s: received and checked the study key (params sha256 %s)", sid, mine[:16])
        return secret

    def _secret_for(self, sid: int) -> bytes:
        secret = self.ledger.secret(sid)
        if secret is None:
            secret = self.fetch_key(sid)
        return secret

    # ------------------------------------------------------------------ global models

    def global_model(self, study: dict, round_no: int, inline: dict | None = None):
        """Global model after ``round_no`` rounds (0 = the initial model); downloads missing aggregates
        (``inline``: an aggregate the platform sent with the work item, used if its hash checks out)."""
        sid = int(study["id"])
        if round_no <= 0:
            return initial_model(study)
        k = self.ledger.latest_global_round(sid, round_no)
        if k >= 1:
            flat, _ = self.ledger.global_model(sid, k)
            model = model_from_flat(study, flat)
        else:
            k, model = 0, initial_model(study)
        if k == round_no:
            return model
        secret = self._secret_for(sid)
        codec = _codec(study_codec_name(study))
        n = n_params(study["model"], len(study["schema"]["features"]))
        for r in range(k + 1, round_no + 1):
            frame, contributors = self._inline_frame(inline, sid, r) or self.client.get_aggregate(sid, r)
            parts = unpack_parts(frame)
            res = codec.decrypt_aggregate(secret, study["encryption"], parts, n)
            model = trainer.apply_update(model, np.asarray(res.mean_update, dtype=np.float64))
            sha = model_sha256(model)
            self.ledger.put_global_model(sid, r, flatten(model), sha)
            log.info("study %s round %s: global model from %s contributor(s), sha256 %s", sid, r,
                     getattr(res, "n_contributors", contributors), sha[:16])
        return model

    @staticmethod
    def _inline_frame(inline: dict | None, sid: int, round_no: int) -> tuple[bytes, int | None] | None:
        """(frame, contributors) of the aggregate a train item carried for ``round_no``, or None
        (absent, another round, or not matching its SHA-256: then the node downloads it)."""
        if not isinstance(inline, dict) or inline.get("round") != round_no:
            return None
        try:
            frame = base64.b64decode(str(inline["frame_b64"]), validate=True)
        except (KeyError, ValueError) as e:
            log.warning("study %s round %s: the aggregate sent with the job is unreadable (%s); downloading it",
                        sid, round_no, e)
            return None
        if hashlib.sha256(frame).hexdigest() != inline.get("sha256"):
            log.warning("study %s round %s: the aggregate sent with the job does not match its SHA-256; "
                        "downloading it", sid, round_no)
            return None
        contributors = inline.get("contributors")
        return frame, (int(contributors) if isinstance(contributors, int) else None)

    # ------------------------------------------------------------------ training

    def on_train(self, item: dict) -> None:
        job_id, study, round_no = int(item["job_id"]), item["study"], int(item["round"])
        sid = int(study["id"])
        job = self.ledger.job(job_id)
        if job is not None and job["state"] in (*RESUMABLE_STATES, "uploaded"):
            log.info("study %s round %s: job %s already trained (state %s); not training again",
                     sid, round_no, job_id, job["state"])
            self.deliver(job_id)
            return
        deadline = _parse_time(item.get("deadline"))
        if deadline is not None and deadline < datetime.now(timezone.utc):
            log.warning("study %s round %s: job %s deadline %s has passed; skipping it", sid, round_no, job_id,
                        item.get("deadline"))
            return
        marks = [("start", time.monotonic())]
        try:
            plan, after, before = self._plan_job(study)
        except Refuse as r:
            log.warning("study %s round %s: refusing job %s (%s): %s", sid, round_no, job_id, r.code, r.reason)
            self.client.refuse(job_id, r.code, r.reason)
            return
        ds = self.dataset(study)
        marks.append(("plan", time.monotonic()))
        global_model = self.global_model(study, round_no - 1, item.get("previous_aggregate"))
        secret = self._secret_for(sid)
        marks.append(("global model", time.monotonic()))
        self.ledger.claim_job(study, job_id, round_no, _plan_dict(plan))
        log.info("study %s round %s: training job %s on %d rows (%d steps, sigma %.3f, q %.4f); "
                 "epsilon %.3f -> %.3f of %g", sid, round_no, job_id, ds.n_train, plan.steps_per_job,
                 plan.noise_multiplier, plan.sample_rate, before, after, study["privacy"]["epsilon"])
        t0 = time.monotonic()
        try:
            res = trainer.train_job(study, global_model, ds.X_train, ds.y_train, plan,
                                    grad_sample_mode=self.cfg.grad_sample_mode, should_stop=self.stop.is_set)
        except trainer.TrainingInterrupted:
            log.info("study %s round %s: job %s abandoned before the end of training (nothing spent, "
                     "nothing uploaded)", sid, round_no, job_id)
            return
        marks.append(("train", time.monotonic()))
        self.ledger.set_job_state(job_id, "trained")
        codec = _codec(study_codec_name(study))
        parts = codec.encrypt_update(secret, study["encryption"], res.update, ds.n_train, np.random.default_rng())
        frame_path = self.cfg.work_dir / "frames" / f"job-{job_id}.flw"
        write_atomic(frame_path, pack_parts(parts), 0o600)
        marks.append(("encrypt", time.monotonic()))
        entry = (plan.noise_multiplier, plan.sample_rate, res.steps)
        history = self.ledger.history(sid)
        eps_total = trainer.epsilon_of([*history, entry], float(study["privacy"]["delta"]),
                                       study["privacy"]["accountant"])
        eps_round = trainer.epsilon_of([entry], float(study["privacy"]["delta"]), study["privacy"]["accountant"])
        spend = {"epsilon": eps_total, "delta": float(study["privacy"]["delta"]),
                 "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate, "steps": res.steps,
                 "clip_norm": float(study["privacy"]["clip_norm"]), "accountant": study["privacy"]["accountant"],
                 "accountant_version": trainer.ACCOUNTANT_VERSION, "epsilon_round": eps_round,
                 "dp_engine": self.cfg.grad_sample_mode}
        self.ledger.record_spend(job_id, sid, entry, spend, str(frame_path))
        marks.append(("account", time.monotonic()))
        log.debug("study %s round %s: job %s steps: %s", sid, round_no, job_id,
                  ", ".join(f"{name} {(t - marks[i][1]) * 1000:.1f} ms" for i, (name, t) in enumerate(marks[1:])))
        log.info("study %s round %s: job %s trained in %.1f s; epsilon spent %.4f of %g (this round %.4f); "
                 "recorded, uploading", sid, round_no, job_id, time.monotonic() - t0, eps_total,
                 study["privacy"]["epsilon"], eps_round)
        self.deliver(job_id)

    def _plan_job(self, study: dict):
        """(plan, epsilon after, epsilon before) for the next job of ``study``, or raise Refuse. No writes."""
        reasons = check_local_limits(study, self.cfg, for_training=True)
        if reasons:
            raise Refuse("local_limit", "; ".join(reasons))
        study["privacy"] = validate_privacy(study["privacy"])
        try:
            ds = self.dataset(study)
        except (DataError, SpecError) as e:
            raise Refuse("data_error", str(e)) from None
        sid = int(study["id"])
        row = self.ledger.study(sid)
        if row is not None and row["noise_multiplier"] is not None:
            if row["config_sha256"] != config_sha256(study):
                raise Refuse("local_limit", "the study's training or privacy configuration changed after this "
                                            "hospital started training it; its privacy plan no longer applies")
            bs, ep = int(study["batch_size"]), int(study["local_epochs"])
            plan = trainer.NoisePlan(float(row["noise_multiplier"]), trainer.sample_rate_for(ds.n_train, bs),
                                     trainer.job_steps(ds.n_train, bs, ep), float(row["target_epsilon"]), ds.n_train)
        else:
            plan = trainer.plan_noise(study, ds.n_train, self.cfg.limits.max_epsilon)
        try:
            after, before = trainer.check_budget(study, self.ledger.history(sid), plan, self.cfg.limits.max_epsilon)
        except BudgetExceeded as e:
            raise Refuse("budget_exceeded", str(e)) from None
        return plan, after, before

    def deliver(self, job_id: int) -> None:
        """Report the recorded spend, then upload the stored frame (idempotent; resumes after a crash)."""
        job = self.ledger.job(job_id)
        if job is None or job["state"] not in RESUMABLE_STATES:
            return
        tag = f"study {job['study_id']} round {job['round']}: job {job_id}"
        try:
            frame = Path(job["frame_path"]).read_bytes()
            if job["state"] == "spend_recorded":
                # The spend rides with the upload (one request); the platform records it first.
                spend = json.loads(job["spend_json"])
                resp = self.client.upload_update(job_id, frame, spend=spend)
                if not (isinstance(resp, dict) and resp.get("privacy_spend_recorded")):
                    # A duplicate upload (409) or a platform that ignores the header: report it alone.
                    self.client.privacy_spend(job_id, spend)
                log.info("%s: privacy spend reported", tag)
            else:
                self.client.upload_update(job_id, frame)
        except ApiError as e:
            if e.status in (404, 422):
                log.error("%s: the platform rejected it (%s); the spend stays counted", tag, e)
                self.ledger.set_job_state(job_id, "failed", error=str(e)[:1000])
                return
            raise
        self.ledger.set_job_state(job_id, "uploaded", expect=RESUMABLE_STATES)
        try:
            Path(job["frame_path"]).unlink()
        except FileNotFoundError:
            pass
        log.info("%s: encrypted update uploaded (%d bytes)", tag, len(frame))

    def resume_pending(self) -> None:
        for job in self.ledger.jobs(states=RESUMABLE_STATES):
            if self.stop.is_set():
                return
            self.deliver(job["job_id"])

    # ------------------------------------------------------------------ evaluation, final model

    def _known_study(self, sid: int) -> dict:
        study = self.ledger.study_config(sid)
        if study is None:
            raise RuntimeError(f"study {sid} is unknown to this node (no invitation or job seen)")
        return study

    def on_evaluate(self, item: dict) -> None:
        sid, round_no = int(item["study_id"]), int(item["round"])
        study = self._known_study(sid)
        model = self.global_model(study, round_no)
        ds = self.dataset(study)
        metrics = trainer.evaluate(model, ds.X_test, ds.y_test, study["schema"]["task"])
        row = self.ledger.study(sid)
        body = {"metrics": metrics, "n_test": ds.n_test, "model_sha256": model_sha256(model),
                "epsilon_spent": float(row["epsilon_spent"]) if row else 0.0}
        self.client.report(sid, round_no, body)
        log.info("study %s round %s: evaluated the global model on %d local test rows: %s (epsilon spent %.4f)",
                 sid, round_no, ds.n_test, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None),
                 body["epsilon_spent"])

    def on_upload_final_model(self, item: dict) -> None:
        sid, round_no = int(item["study_id"]), int(item["round"])
        study = self._known_study(sid)
        model = self.global_model(study, round_no)
        data = model_bytes(model)
        self.client.upload_final_model(sid, data)
        log.info("study %s: uploaded the final model of round %s (sha256 %s)", sid, round_no,
                 hashlib.sha256(data).hexdigest()[:16])


def _set_torch_threads() -> None:
    """The registry's models are small: torch's intra-op threads only spin against each other and
    against other processes on the host (measured 10x slower jobs with 3 nodes on 2 cores)."""
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("HOSPITAL_NODE_TORCH_THREADS", "1"))))


def _plan_dict(plan: trainer.NoisePlan) -> dict:
    return {"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
            "steps_per_job": plan.steps_per_job, "n_train": plan.n_train, "target_epsilon": plan.target_epsilon}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
