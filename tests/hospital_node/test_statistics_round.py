"""The statistics round (round 0) on real nodes in-process: each hospital's noisy vector encrypted
under the study key, the ciphertexts added as the platform adds them, every hospital deriving
identical constants, the spend in the ledger and the training plan, a hostile contribution bounded."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_node, make_study, write_csv

from fedproto import statistics
from fedproto.codec import get_codec
from fedproto.study import StudyConfig
from fedproto.wire import pack_parts, unpack_parts
from hospital_node import statistics_round, trainer

N_FEATURES = 4


EPS = 4.0  # the statistics' share is 1.0: noise small enough to check the constants against the pooled data


def _study():
    s = make_study(N_FEATURES)
    s["privacy"] = {**s["privacy"], "epsilon": EPS}
    s["schema"]["features"] = [{"name": f"f{i}", "type": "float", "range": [-6.0, 12.0]} for i in range(N_FEATURES)]
    return s


@pytest.fixture
def nodes(tmp_path):
    study = _study()
    codec = get_codec(study["encryption"]["codec"])
    secret = codec.generate_secret(study["encryption"])
    out = []
    for i, n_rows in enumerate((120, 200, 300)):
        d = tmp_path / f"h{i}"
        d.mkdir()
        csv = d / "data.csv"
        write_csv(csv, n_rows=n_rows, n_features=N_FEATURES, seed=i)
        # non-IID: hospital i's features are shifted by 2 i (what local standardisation would erase)
        lines = csv.read_text().splitlines()
        shifted = [lines[0]] + [",".join([f"{float(v) + 2 * i:.6f}" for v in ln.split(",")[:N_FEATURES]]
                                         + ln.split(",")[N_FEATURES:]) for ln in lines[1:]]
        csv.write_text("\n".join(shifted) + "\n")
        node = make_node(d, csv, study, limits=f"max_epsilon = {EPS}")
        node.ledger.set_secret(study["id"], secret, codec.public_params_sha256(codec.public_params(secret)))
        out.append(node)
    yield study, out, secret
    for n in out:
        n.ledger.close()


def _aggregate(study, secret, frames):
    codec = get_codec(study["encryption"]["codec"])
    ctx = codec.load_params(codec.public_params(secret))
    return pack_parts(codec.aggregate(ctx, [unpack_parts(f) for f in frames]))


def _round0(study, nodes, secret, frames_override=None):
    for j, node in enumerate(nodes):
        node.handle({"kind": "train", "job_id": 100 + j, "study": study, "round": 0})
    frames = [n.client.named("upload_update")[0][2] for n in nodes]
    if frames_override:
        frames = frames_override(frames)
    agg = _aggregate(study, secret, frames)
    for node in nodes:
        node.client.get_aggregate = lambda sid, r, agg=agg: (agg, len(frames)) if r == 0 else None
    return frames


def test_every_hospital_derives_identical_constants_and_the_ledger_has_the_spend(nodes):
    study, ns, secret = nodes
    cfg = StudyConfig.from_wire(study)
    _round0(study, ns, secret)
    entry = statistics.spend_entry(cfg.schema, EPS, 1e-5)
    for node in ns:
        (call,) = node.client.named("upload_update")
        spend = call[3]
        assert node.ledger.history(study["id"]) == [pytest.approx(entry)]
        assert (spend["noise_multiplier"], spend["sample_rate"], spend["steps"]) == pytest.approx(entry)
        assert spend["epsilon"] == pytest.approx(trainer.epsilon_of([entry], 1e-5))
        assert spend["clip_norm"] == pytest.approx(statistics.sensitivity(cfg.schema))
        assert spend["epsilon"] <= statistics.epsilon_share(cfg.schema) * EPS + 1e-9
    docs = [node.dataset(cfg).preprocessing for node in ns]
    assert all(d == docs[0] for d in docs)  # identical constants at every hospital
    assert {statistics.document_sha256(d) for d in docs} == {statistics.document_sha256(docs[0])}
    means = [f["center"] for f in docs[0]["features"]]
    # the pooled mean of the shifted hospitals (about (120*0 + 200*2 + 300*4) / 620 = 2.6), within the noise
    assert all(1.0 < m < 4.0 for m in means), means
    # round 0's report: the document's hash and the constants
    ns[0].handle({"kind": "evaluate", "study_id": study["id"], "study": study, "round": 0})
    (rep,) = ns[0].client.named("report")
    assert rep[2] == 0 and rep[3]["model_sha256"] == statistics.document_sha256(docs[0])
    assert rep[3]["preprocessing"]["statistics"]["n"] > 0


def test_the_training_plan_reserves_the_statistics_spend(nodes):
    study, ns, secret = nodes
    cfg = StudyConfig.from_wire(study)
    _round0(study, ns, secret)
    node = ns[0]
    ds = node.dataset(cfg)
    plan = trainer.plan_noise(cfg, ds.n_train, EPS)
    without = trainer._noise_multiplier(EPS, 1e-5, plan.sample_rate, cfg.rounds * plan.steps_per_job, "rdp")
    assert plan.noise_multiplier > without  # the statistics cost less noise budget for training
    total = trainer.epsilon_of([*node.ledger.history(study["id"]),
                                *[(plan.noise_multiplier, plan.sample_rate, plan.steps_per_job)] * cfg.rounds], 1e-5)
    assert 0.99 * EPS < total <= EPS + 1e-9  # statistics + every planned job: the budget, never above
    node.handle({"kind": "train", "job_id": 201, "study": study, "round": 1})
    spend = node.client.named("upload_update")[-1][3]
    assert spend["steps"] > 0 and spend["epsilon"] > node.client.named("upload_update")[0][3]["epsilon"]
    assert spend["epsilon"] == pytest.approx(trainer.epsilon_of(node.ledger.history(study["id"]), 1e-5))


def test_a_hostile_contribution_is_bounded_by_the_codec_clip_and_refused(nodes):
    study, ns, secret = nodes
    cfg = StudyConfig.from_wire(study)
    codec = get_codec(study["encryption"]["codec"])
    z = statistics_round.entry_for(ns[0], cfg)[0]
    scale = statistics_round.scale(cfg, z)

    def hostile(frames):  # hospital 2 claims a billion rows and values far above every range
        vec = np.full(len(statistics.layout(cfg.schema)), 1e9)
        parts = codec.encrypt_update(secret, study["encryption"], vec / scale, 1000, np.random.default_rng(0))
        return [*frames[:2], pack_parts(parts)]

    _round0(study, ns, secret, hostile)
    agg = unpack_parts(ns[0].client.get_aggregate(study["id"], 0)[0])
    res = codec.decrypt_aggregate(secret, study["encryption"], agg, len(statistics.layout(cfg.schema)))
    total = statistics.from_codec(res.mean_update, res.n_contributors, scale)
    # clipped per slot to the public scale: the hostile hospital adds at most `scale` rows' worth
    assert total[0] <= 120 + 200 + scale * 1.0 + 1e-6 * scale + 10 * z * statistics.sensitivity(cfg.schema)
    ns[0].handle({"kind": "train", "job_id": 301, "study": study, "round": 1})
    (refusal,) = ns[0].client.named("refuse")
    assert refusal[1:3] == (301, "statistics_unusable") and "out of range" in refusal[3]
    assert ns[0].ledger.statistics(study["id"]) is None


def test_a_retried_round_0_resends_the_same_vector_at_no_cost(nodes):
    study, ns, _ = nodes
    node = ns[0]
    node.handle({"kind": "train", "job_id": 100, "study": study, "round": 0})
    node.handle({"kind": "train", "job_id": 150, "study": study, "round": 0})  # attempt 2 of round 0
    first, second = node.client.named("upload_update")
    assert first[2] != second[2]  # a fresh encryption
    assert second[3]["steps"] == 0 and second[3]["reuses_job"] == 100 and second[3]["epsilon"] == first[3]["epsilon"]
    assert len(node.ledger.history(study["id"])) == 1


def test_before_round_0_is_done_the_data_is_checked_with_provisional_constants(nodes):
    from hospital_node.errors import ApiError, TransientError
    from hospital_node.planning import plan_job

    study, ns, _ = nodes
    cfg = StudyConfig.from_wire(study)

    def no_aggregate(sid, r):
        raise ApiError(404, "not_found", "round 0 has no aggregate", "GET", "aggregate")

    ns[0].client.get_aggregate = no_aggregate
    ds = ns[0].dataset(cfg)  # an invitation's data check: works, with stand-ins from the schema
    assert ds.preprocessing["statistics"]["provisional"] and ds.n_train > 0
    with pytest.raises(TransientError):  # never trained with them
        plan_job(ns[0], cfg)
    assert ns[0].ledger.statistics(study["id"]) is None
