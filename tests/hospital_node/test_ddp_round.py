"""Distributed-DP round in process, with real BFV (TenSEAL), real secure-aggregation clients and
coordinator over JSON, real per-record gradients: the unmasked sum is exact for any dropout
pattern within the quorum, never wraps, a key holder decrypting one masked upload sees uniform
values (and the test can tell the unmasked one apart), and the accounting states the model."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from scipy.stats import chisquare, kstest

from fedproto import PROTOCOL_VERSION, ddp_config, ddp_slots
from fedproto.codec import get_codec
from fedproto.codec.bfv_params import PLAIN_MODULUS
from fedproto.dp import ddg_epsilon
from fedproto.errors import PoisonedAggregateError, SpecError
from fedproto.secagg import (
    KeyAdvert,
    KeyDirectory,
    RoundCoordinator,
    SecAggClient,
    ShareBundle,
    ShareInbox,
    UnmaskRequest,
    UnmaskResponse,
)
from fedproto.study import StudyConfig, validate_study
from hospital_node import ddp_update
from hospital_node.networks import flatten, initial_model

N_FEATURES = 3


def ddp_study(n_hospitals: int = 4, *, collusion: int = 1, quorum: int = 3, max_hospitals: int = 20,
              quant_bits: int = 24, **privacy) -> StudyConfig:
    d = {"id": 11, "name": "DDP", "consortium": "North", "protocol_version": PROTOCOL_VERSION,
         "schema": {"task": "binary_classification",
                    "features": [{"name": f"x{i}", "type": "float", "center": 0.0, "scale": 1.0}
                                 for i in range(N_FEATURES)],
                    "label": {"name": "y", "type": "binary"}},
         "model": {"type": "logistic_regression"}, "rounds": 5, "local_epochs": 1, "batch_size": 32,
         "learning_rate": 0.5, "quorum": quorum, "round_deadline_s": 600, "seed": 5,
         "privacy": {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "mode": "distributed",
                     "collusion": collusion, **privacy},
         "encryption": {"codec": "bfv-packed-v1", "max_hospitals": max_hospitals, "quant_bits": quant_bits}}
    return validate_study(d, n_hospitals=n_hospitals)


def data(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float32)
    return X, y


def wire(msg, cls):
    return cls.from_dict(json.loads(json.dumps(msg.to_dict())))


class DdpRound:
    """K hospitals and the platform's coordinator for one round, messages through JSON."""

    def __init__(self, study: StudyConfig, ids: tuple[int, ...], round_index: int = 1, seed: int = 0):
        rnd = random.Random(seed)
        self.setup = ddp_config.round_setup(study, round_index, ids)
        static = {h: PrivateKey(rnd.randbytes(32)) for h in ids}
        self.pubs = {h: bytes(k.public_key) for h, k in static.items()}
        self.clients = {h: SecAggClient(self.setup, h, bytes(static[h])) for h in ids}
        self.co = RoundCoordinator(self.setup)

    def exchange(self, shared: list[int]) -> None:
        for h in self.clients:
            self.co.add_advert(wire(self.clients[h].advert(), KeyAdvert))
        directory = wire(self.co.directory(), KeyDirectory)
        for h in shared:
            self.co.add_bundle(wire(self.clients[h].share(directory, self.pubs), ShareBundle))
        for h in shared:
            self.clients[h].receive(wire(self.co.inbox(h), ShareInbox), self.pubs)

    def unmask(self) -> np.ndarray:
        request = wire(self.co.unmask_request(), UnmaskRequest)
        for h in request.survivors:
            self.co.add_unmask_response(wire(self.clients[h].unmask(request), UnmaskResponse))
        return self.co.correction()


@pytest.fixture(scope="module")
def secret():
    return get_codec("bfv-packed-v1").generate_secret({"codec": "bfv-packed-v1"})


def aggregate(study, secret, uploads):
    codec = get_codec(study.codec)
    ctx = codec.load_params(codec.public_params(secret))
    parts = codec.aggregate(ctx, uploads)
    expected = codec.n_parts(study.encryption, study.n_params)
    return codec.decrypt_slots(secret, study.encryption, parts, expected)[0]


def test_round_with_a_dropout_decrypts_the_exact_noised_sum_of_the_survivors(secret):
    study = ddp_study()
    model = initial_model(study)
    r = DdpRound(study, (1, 2, 3, 4))
    r.exchange([1, 2, 3, 4])
    plan, bounds = ddp_config.noise_plan(study), ddp_config.packing(study)
    expected = np.zeros(study.n_params, dtype=np.int64)
    uploads = []
    for h in (1, 2, 3):  # hospital 4 shared its keys, then died before uploading
        X, y = data(h)
        g, noise = ddp_update.noised_sum(study, model, X, y, plan, np.random.default_rng(h))
        assert np.abs(g).max() <= bounds.sum_clip and np.abs(noise).max() <= bounds.noise_bound
        expected += g + noise
        slots = ddp_slots.encode(g, noise, bounds, r.setup.vector_len)
        uploads.append(get_codec(study.codec).encrypt_slots(secret, r.clients[h].mask(slots)))
        r.co.add_upload(h)
    total = aggregate(study, secret, uploads)
    sums = ddp_slots.decode_sum(total, r.unmask(), study.n_params, bounds, 3)
    assert sums.tolist() == expected.tolist()
    assert r.co.transcript().dropped == (4,)
    # the masked sum without the correction is not the sum (the masks of 4 and the self-masks remain)
    with pytest.raises(PoisonedAggregateError):
        ddp_slots.decode_sum(total, np.zeros_like(total), study.n_params, bounds, 3)
    nxt = ddp_update.global_step(study, model, sums, 3)
    assert np.all(np.isfinite(flatten(nxt))) and not np.allclose(flatten(nxt), flatten(model))


def test_contribute_uploads_the_codecs_part_count_and_a_late_hospital_is_refused(secret):
    study = ddp_study()
    model = initial_model(study)
    r = DdpRound(study, (1, 2, 3, 4), seed=3)
    r.exchange([1, 2, 3, 4])
    ups = {h: ddp_update.contribute(study, model, *data(h), r.clients[h], secret, np.random.default_rng(h))
           for h in (1, 2, 3, 4)}
    codec = get_codec(study.codec)
    assert all(len(c.parts) == codec.n_parts(study.encryption, study.n_params) for c in ups.values())
    for h in (1, 2, 3):
        r.co.add_upload(h)
    correction = r.unmask()
    with pytest.raises(Exception, match="late"):
        r.co.add_upload(4)
    total = aggregate(study, secret, [ups[h].parts for h in (1, 2, 3)])
    sums = ddp_slots.decode_sum(total, correction, study.n_params, ups[1].bounds, 3)
    # the sum is three gradient sums plus noise of total std sigma_local * sqrt(3): bounded, signed
    assert np.abs(sums).max() <= 3 * (ups[1].bounds.sum_clip + ups[1].bounds.noise_bound)
    # adding the late upload anyway leaves its masks in: decoding refuses
    total4 = aggregate(study, secret, [ups[h].parts for h in (1, 2, 3, 4)])
    with pytest.raises(PoisonedAggregateError):
        ddp_slots.decode_sum(total4, correction, study.n_params, ups[1].bounds, 3)


@given(k=st.integers(3, 7), data=st.data())
@settings(max_examples=25, deadline=None)
def test_worst_case_values_of_any_survivor_set_sum_exactly_without_wrapping(k, data):
    collusion = data.draw(st.integers(0, (k - 1) // 2))
    from fedproto.secagg import min_threshold
    thr = min_threshold(k, collusion)
    study = ddp_study(k, collusion=collusion, quorum=thr, max_hospitals=k)
    bounds = ddp_config.packing(study)
    r = DdpRound(study, tuple(range(1, k + 1)), seed=k)
    shared = sorted(data.draw(st.lists(st.sampled_from(range(1, k + 1)), min_size=thr, max_size=k, unique=True)))
    r.exchange(shared)
    survivors = sorted(data.draw(st.lists(st.sampled_from(shared), min_size=thr, max_size=len(shared), unique=True)))
    G, M = bounds.sum_clip, bounds.noise_bound
    sign = data.draw(st.sampled_from([1, -1]))  # every survivor at the top (or the bottom) of the range
    plain = []
    masked = []
    for h in survivors:
        g = np.full(study.n_params, sign * (G + 5), dtype=np.int64)  # beyond G: clamped
        z = np.full(study.n_params, sign * M, dtype=np.int64)
        s = ddp_slots.encode(g, z, bounds, r.setup.vector_len)
        plain.append(s)
        masked.append(r.clients[h].mask(s))
        r.co.add_upload(h)
    total = np.zeros(r.setup.vector_len, dtype=object)
    for m in masked:
        total = (total + m.astype(object)) % PLAIN_MODULUS
    assert max(int(v) for v in sum(p.astype(object) for p in plain)) < PLAIN_MODULUS  # the plain sum never wraps t
    sums = ddp_slots.decode_sum(total.astype(np.uint64), r.unmask(), study.n_params, bounds, len(survivors))
    assert sums.tolist() == [sign * len(survivors) * (G + M)] * study.n_params


def uniform_p_values(v: np.ndarray) -> tuple[float, float]:
    """KS p-value of v / t against U(0, 1) and chi-square p-value of the low byte."""
    return (kstest(v.astype(np.float64) / PLAIN_MODULUS, "uniform").pvalue,
            chisquare(np.bincount((v % np.uint64(256)).astype(np.int64), minlength=256)).pvalue)


def test_a_key_holder_decrypting_one_masked_upload_sees_uniform_values(secret):
    study = ddp_study()
    model = initial_model(study)
    r = DdpRound(study, (1, 2, 3, 4), seed=9)
    r.exchange([1, 2, 3, 4])
    X, y = data(1, n=200)
    plan, bounds = ddp_config.noise_plan(study), ddp_config.packing(study)
    g, noise = ddp_update.noised_sum(study, model, X, y, plan, np.random.default_rng(1))
    slots = ddp_slots.encode(g, noise, bounds, r.setup.vector_len)
    upload = get_codec(study.codec).encrypt_slots(secret, r.clients[1].mask(slots))
    codec = get_codec(study.codec)
    seen = codec.decrypt_slots(secret, study.encryption, upload, codec.n_parts(study.encryption, study.n_params))[0]
    ks, low = uniform_p_values(seen)
    assert ks > 1e-3 and low > 1e-3, (ks, low)
    assert np.unique(seen).size == seen.size  # 4096 draws mod t ~ 2^60: a repeat has probability ~1e-11
    # the same statistic tells the unmasked slots apart: the test can fail
    ks_plain, low_plain = uniform_p_values(slots)
    assert ks_plain < 1e-10 and low_plain < 1e-10


# ------------------------------------------------------------------ study validation and accounting

def test_distributed_mode_requirements_are_checked_with_clear_errors():
    with pytest.raises(SpecError, match="at least 3 hospitals"):
        ddp_study(2, quorum=2)
    with pytest.raises(SpecError, match="threshold is 4"):
        ddp_study(5, collusion=2, quorum=3)
    with pytest.raises(SpecError, match="below the quorum"):
        ddp_study(4, collusion=3, quorum=3)
    with pytest.raises(SpecError, match="digits"):
        ddp_study(4, quant_bits=12)  # 17-bit digits: noise of bound ~9e4 does not fit beside a record
    with pytest.raises(SpecError, match="too wide for the table sampler"):
        ddp_study(4, quant_step=1e-6)
    with pytest.raises(SpecError, match="public normaliser"):
        validate_study({**ddp_study().to_wire(), "batch_size": 0}, n_hospitals=4)
    with pytest.raises(SpecError, match="unknown field"):
        validate_study({**ddp_study().to_wire(), "privacy": {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0,
                                                             "collusion": 1}}, n_hospitals=4)
    cfg = ddp_study()
    assert StudyConfig.from_wire(cfg.to_wire()) == cfg
    assert cfg.to_wire()["privacy"] == {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "accountant": "rdp",
                                        "mode": "distributed", "collusion": 1, "quant_step": 1.0 / 1024}


def test_the_statement_gives_the_model_t_and_an_epsilon_an_auditor_can_recompute():
    study = ddp_study()
    st_ = ddp_config.statement(study)
    assert st_["privacy_model"] == "distributed" and st_["collusion"] == 1 and st_["honest_shares"] == 2
    plan = ddp_config.noise_plan(study)
    eps, _ = ddg_epsilon(sigma=plan.local_sigma, honest_shares=study.quorum - 1, l2_sensitivity=plan.l2_sensitivity,
                         dim=study.n_params, rounds=study.rounds, delta=plan.delta - plan.sampler_delta)
    assert eps == pytest.approx(st_["epsilon"]) and eps <= study.privacy.epsilon
    # more honest survivors only add noise: 4 survivors, T = 1 spend less than the planned worst case
    eps4, _ = ddg_epsilon(sigma=plan.local_sigma, honest_shares=3, l2_sensitivity=plan.l2_sensitivity,
                          dim=study.n_params, rounds=study.rounds, delta=plan.delta - plan.sampler_delta)
    assert eps4 < eps
    # the same noise with no collusion bound (T = Q: a single hospital's share) buys far less
    eps1, _ = ddg_epsilon(sigma=plan.local_sigma, honest_shares=1, l2_sensitivity=plan.l2_sensitivity,
                          dim=study.n_params, rounds=study.rounds, delta=plan.delta - plan.sampler_delta)
    assert eps1 > 1.3 * eps


def test_the_refusal_rule_states_the_model_and_the_threshold_behind_the_epsilon():
    from hospital_node.config import Limits
    from hospital_node.planning import check_local_limits

    study = ddp_study()
    assert check_local_limits(study, Limits(max_epsilon=1.0), for_training=True) == []
    reasons = check_local_limits(study, Limits(max_epsilon=0.5), for_training=True)
    assert any("distributed DP (collusion threshold T = 1, 2 honest noise shares" in r and "above this hospital's "
               "max_epsilon 0.5" in r for r in reasons), reasons


# ------------------------------------------------------------------ retries against the plan's R released sums

class RefusalClient:
    """The platform as the refusal path sees it: a refusal is recorded, any exchange is a failure."""

    def __init__(self):
        self.refused: list[tuple[int, str, str]] = []

    def refuse(self, job_id, code, reason):
        self.refused.append((job_id, code, reason))

    def secagg(self, *a, **k):
        raise AssertionError("a refused release must not join the round's exchange")


def ledger_with_releases(tmp_path, study: StudyConfig, rounds: list[int]):
    """A node ledger holding one recorded distributed-DP spend per entry of ``rounds`` (a round
    number twice: its first attempt failed after this node's contribution and the round was retried)."""
    from hospital_node.ddp_round import epsilon_after
    from hospital_node.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")
    for job_id, round_no in enumerate(rounds, start=1):
        assert ledger.claim_job(study, job_id, round_no, None) and ledger.set_job_state(job_id, "trained")
        ledger.record_spend(job_id, study.study_id, (1.0, 1.0, 1),
                            {"epsilon": epsilon_after(study, job_id)}, str(tmp_path / f"{job_id}.flw"))
    return ledger


def test_the_plan_covers_r_releases_and_a_release_beyond_them_is_refused_with_its_true_epsilon():
    study = ddp_study()  # R = 5
    plan = ddp_config.noise_plan(study)
    assert ddp_config.epsilon_after(study, study.rounds) == pytest.approx(plan.epsilon)
    assert ddp_config.epsilon_after(study, study.rounds) <= study.privacy.epsilon
    for released in range(study.rounds):
        assert ddp_config.release_refusal(study, released) is None
    beyond = ddp_config.epsilon_after(study, study.rounds + 1)
    assert beyond > study.privacy.epsilon  # what a sixth release would really cost: more than the study has
    reason = ddp_config.release_refusal(study, study.rounds)
    assert reason is not None and "covers 5" in reason and f"{beyond:.4f}" in reason and "T = 1" in reason
    # the hospital's own cap below the plan's epsilon refuses the release that would cross it
    cap = ddp_config.epsilon_after(study, 3)
    assert ddp_config.release_refusal(study, 2, cap) is None
    assert "max_epsilon" in ddp_config.release_refusal(study, 3, cap)


def test_a_node_whose_retried_round_used_up_the_plan_refuses_the_last_round_and_records_nothing(tmp_path):
    from types import SimpleNamespace

    from hospital_node import ddp_round
    from hospital_node.config import Limits

    study = ddp_study()  # R = 5; round 3's first attempt failed after this node contributed, then was retried
    ledger = ledger_with_releases(tmp_path, study, [1, 2, 3, 3, 4])

    def never(*a, **k):
        raise AssertionError("nothing is trained or delivered for a refused release")

    client = RefusalClient()
    ctx = SimpleNamespace(ledger=ledger, client=client, cfg=SimpleNamespace(limits=Limits(max_epsilon=10.0)),
                          dataset=never)
    before = dict(ledger.study(study.study_id))

    ddp_round.on_train(ctx, {"job_id": 6, "round": 5}, study, global_model=never, deliver=never)
    [(job_id, code, reason)] = client.refused
    assert (job_id, code) == (6, "budget_exceeded") and "already contributed to 5 released sums" in reason
    after = ledger.study(study.study_id)
    assert dict(after) == before and ledger.job(6) is None
    # the ledger states the five releases made, at their true epsilon (the plan's after five)
    assert after["rounds_trained"] == 5
    assert float(after["epsilon_spent"]) == pytest.approx(ddp_round.epsilon_after(study, 5))
    # a node with a release left in the plan does not refuse (it goes on to the exchange)
    client2 = RefusalClient()
    ctx2 = SimpleNamespace(ledger=ledger_with_releases(tmp_path / "b", study, [1, 2, 3, 4]), client=client2,
                           cfg=SimpleNamespace(limits=Limits(max_epsilon=10.0)), dataset=never)
    with pytest.raises(AssertionError, match="nothing is trained"):
        ddp_round.on_train(ctx2, {"job_id": 5, "round": 5}, study, global_model=never, deliver=never)
    assert client2.refused == []
