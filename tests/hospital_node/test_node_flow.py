"""The node's job handling in-process, with a recording stand-in for the HTTP client
(the real HTTP path against a live platform is covered by the integration tests).
Real Opacus training, real codec encryption, real SQLite ledger."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_node

from fedproto.codec import get_codec
from fedproto.errors import SpecError
from fedproto.study import StudyConfig
from fedproto.wire import unpack_parts
from hospital_node import rounds, trainer


@pytest.fixture
def node(tmp_path, data_csv, study):
    n = make_node(tmp_path, data_csv, study, limits="max_epsilon = 1.0")
    yield n
    n.ledger.close()


def _train_item(study, job_id, rnd):
    return {"kind": "train", "job_id": job_id, "study": study, "round": rnd}


def _serve_own_updates_as_aggregates(node):
    """Round r's aggregate is this node's own update of round r (one contributor), so rounds can follow
    each other without other hospitals."""
    def get_aggregate(sid, r):
        (call,) = [c for c in node.client.named("upload_update") if node.ledger.job(c[1])["round"] == r]
        return call[2], 1

    node.client.get_aggregate = get_aggregate


def test_train_records_spend_before_upload_and_never_retrains(node, study):
    node.handle(_train_item(study, 11, 1))
    names = [c[0] for c in node.client.calls]
    assert names == ["upload_update"]  # the spend rides with the upload, one request
    spend = node.client.named("upload_update")[0][3]
    job = node.ledger.job(11)
    assert job["state"] == "uploaded"
    hist = node.ledger.history(study["id"])
    assert len(hist) == 1 and spend["steps"] == hist[0][2] == trainer.job_steps(80, 16, 1)
    assert spend["epsilon"] == pytest.approx(trainer.epsilon_of(hist, 1e-5))
    assert spend["epsilon"] <= 1.0 and spend["accountant"] == "rdp" and spend["clip_norm"] == 1.0
    assert spend["dp_engine"] == "fused"  # the default engine, recorded with the spend
    frame = node.client.named("upload_update")[0][2]
    codec = get_codec("bfv-packed-v1")
    agg = codec.decrypt_aggregate(node.ledger.secret(study["id"]), study["encryption"], unpack_parts(frame), 5)
    assert agg.n_contributors == 1 and np.abs(agg.mean_update).max() > 0
    # the same job again (platform retry): not retrained, no second spend
    node.handle(_train_item(study, 11, 1))
    assert len(node.ledger.history(study["id"])) == 1


def test_round_2_uses_the_aggregate_sent_with_the_job_and_downloads_a_tampered_one(node, study):
    import base64
    import hashlib

    node.handle(_train_item(study, 11, 1))
    frame = node.client.named("upload_update")[0][2]  # stands in for round 1's aggregate (one contributor)
    inline = {"round": 1, "contributors": 1, "sha256": hashlib.sha256(frame).hexdigest(),
              "frame_b64": base64.b64encode(frame).decode()}
    node.client.calls.clear()
    node.handle({**_train_item(study, 12, 2), "previous_aggregate": inline})
    assert [c[0] for c in node.client.calls] == ["upload_update"]  # no aggregate download
    mean = get_codec("bfv-packed-v1").decrypt_aggregate(node.ledger.secret(study["id"]), study["encryption"],
                                                        unpack_parts(frame), 5).mean_update
    flat, _ = node.ledger.global_model(study["id"], 1)
    initial = trainer.initial_model(StudyConfig.from_wire(study))
    assert np.allclose(flat, trainer.flatten(trainer.apply_update(initial, mean)))
    # Round 3: the inline aggregate of round 2 does not match its hash -> downloaded instead.
    downloads = []

    def get_aggregate(sid, r):
        downloads.append((sid, r))
        return frame, 1

    node.client.get_aggregate = get_aggregate
    node.client.calls.clear()
    node.handle({**_train_item(study, 13, 3), "previous_aggregate": {**inline, "round": 2, "sha256": "0" * 64}})
    assert downloads == [(study["id"], 2)] and node.ledger.job(13)["state"] == "uploaded"


def test_spend_is_reported_on_its_own_when_the_platform_does_not_confirm_it(node, study):
    """A platform that ignores X-Privacy-Spend (or a duplicate upload answered 409, None) does not
    confirm the spend: the node reports it with POST privacy-spend, so it is never left out."""
    node.client.upload_update = lambda job_id, frame, spend=None: node.client.calls.append(
        ("upload_update", job_id, frame, spend))
    node.handle(_train_item(study, 11, 1))
    assert [c[0] for c in node.client.calls] == ["upload_update", "privacy_spend"]
    assert node.client.named("privacy_spend")[0][2] == node.client.named("upload_update")[0][3]
    assert node.ledger.job(11)["state"] == "uploaded"


def test_crash_after_spend_recorded_resumes_from_stored_frame(node, study, monkeypatch):
    def boom(*a, **k):
        raise ConnectionError("simulated crash before upload")

    monkeypatch.setattr(rounds, "deliver", boom)
    with pytest.raises(ConnectionError):
        node.handle(_train_item(study, 12, 1))
    assert node.ledger.job(12)["state"] == "spend_recorded"
    monkeypatch.undo()
    node.client.calls.clear()
    node.resume_pending()  # what the daemon does first after a restart
    assert [c[0] for c in node.client.calls] == ["upload_update"] and node.client.calls[0][3]["steps"] > 0
    assert node.ledger.job(12)["state"] == "uploaded" and len(node.ledger.history(study["id"])) == 1


def test_budget_refusal_leaves_ledger_byte_for_byte_unchanged(node, study):
    _serve_own_updates_as_aggregates(node)
    for r in range(1, study["rounds"] + 1):
        node.handle(_train_item(study, 20 + r, r))
    spent = node.ledger.study(study["id"])["epsilon_spent"]
    assert spent <= 1.0
    node.client.calls.clear()
    before = node.cfg.ledger.read_bytes()
    node.handle(_train_item(study, 99, study["rounds"] + 1))
    assert node.cfg.ledger.read_bytes() == before
    (call,) = node.client.calls
    assert call[:3] == ("refuse", 99, "budget_exceeded")
    assert f"{spent:.4f}" in call[3] and "study budget of 1" in call[3]
    assert node.ledger.job(99) is None


def test_hospital_cap_refusal_names_the_cap(node, study):
    _serve_own_updates_as_aggregates(node)
    node.handle(_train_item(study, 31, 1))
    import dataclasses
    node.cfg = dataclasses.replace(node.cfg, limits=dataclasses.replace(node.cfg.limits, max_epsilon=0.9))
    # two more planned jobs fit the study budget (1.0) but not a cap lowered to below it
    node.handle(_train_item(study, 32, 2))
    node.client.calls.clear()
    before = node.cfg.ledger.read_bytes()
    node.handle(_train_item(study, 33, 3))
    refusals = node.client.named("refuse")
    assert refusals and refusals[0][2] == "budget_exceeded" and "max_epsilon=0.9" in refusals[0][3]
    assert node.cfg.ledger.read_bytes() == before


def test_invitation_declines_what_does_not_fit(node, study):
    node.handle({"kind": "invitation", "study": {**study, "id": 8, "privacy": {**study["privacy"], "epsilon": 5.0}}})
    (call,) = node.client.named("decision")
    assert call[1:3] == (8, "decline") and "max_epsilon" in call[3]
    node.client.calls.clear()
    node.handle({"kind": "invitation", "study": {**study, "id": 9}})  # fits, auto_approve off: left to the admin
    assert node.client.calls == [] and node.ledger.study(9)["invitation_state"] == "pending_admin"


def test_warm_up_keeps_the_fused_engine_only_while_it_reproduces_opacus(node, monkeypatch, caplog):
    from hospital_node import dp_fused

    assert node.cfg.grad_sample_mode == "fused"
    node.warm_up()  # the real check: fused and Opacus 'ew' train to the same weights
    assert node.cfg.grad_sample_mode == "fused"
    assert "checked against Opacus" in caplog.text
    # the same real check with a bound no float computation meets: the node falls back to Opacus
    monkeypatch.setattr(dp_fused, "SELF_CHECK_TOLERANCE", 0.0)
    node.warm_up()
    assert node.cfg.grad_sample_mode == "ew"
    assert "does not reproduce Opacus" in caplog.text and 'grad_sample_mode = "ew"' in caplog.text


def test_warm_up_trains_with_opacus_when_the_fused_check_cannot_run(node, monkeypatch, caplog):
    def changed_api(*a, **k):  # stands in for an Opacus release without the function the check calls
        raise AttributeError("module 'opacus' has no attribute 'PrivacyEngine'")

    monkeypatch.setattr(trainer, "matches_opacus", changed_api)
    node.warm_up()
    assert node.cfg.grad_sample_mode == "ew"
    assert "check of the fused step against Opacus failed (AttributeError" in caplog.text


def test_a_study_the_node_cannot_read_declines_the_invitation_and_refuses_the_job(node, study):
    node.handle({"kind": "invitation", "study": {**study, "id": 8, "protocol_version": 2}})
    node.handle({"kind": "invitation", "study": {**study, "id": 9, "batch_size": -1}})
    (v2, bad) = node.client.named("decision")
    assert v2[1:3] == (8, "decline") and "protocol version 2 is not supported by this node" in v2[3]
    assert bad[1:3] == (9, "decline") and "invalid study configuration: batch_size must be an integer" in bad[3]
    assert node.ledger.study(8) is None and node.ledger.study(9) is None  # nothing readable to store
    node.client.calls.clear()
    before = node.cfg.ledger.read_bytes()
    node.handle(_train_item({**study, "learning_rate": -1.0}, 40, 1))
    (call,) = node.client.calls
    assert call[:3] == ("refuse", 40, "local_limit") and "learning_rate must be a number" in call[3]
    assert node.cfg.ledger.read_bytes() == before and node.ledger.job(40) is None


def test_items_without_a_study_use_the_stored_one_and_a_mismatch_is_refused(node, study):
    node.handle(_train_item(study, 11, 1))
    node.client.calls.clear()
    node.handle({"kind": "evaluate", "study_id": study["id"], "round": 0})  # the stored study (the ledger's)
    (report,) = node.client.named("report")
    assert report[1:3] == (study["id"], 0) and set(report[3]["metrics"]) == {"auc", "accuracy"}
    with pytest.raises(SpecError, match="names study 8 but carries study 7"):
        node.handle({"kind": "evaluate", "study_id": 8, "study": study, "round": 0})
    with pytest.raises(RuntimeError, match="study 99 is unknown to this node"):
        node.handle({"kind": "evaluate", "study_id": 99, "round": 0})


def test_a_release_the_platform_holds_back_is_logged_once_and_not_retried(node, study, caplog):
    from hospital_node.errors import ApiError

    def held_back(sid, data):
        node.client.calls.append(("upload_final_model", sid))
        raise ApiError(409, "attestation_mismatch", "hospitals attested different final models", "PUT", "final-model")

    node.client.upload_final_model = held_back
    item = {"kind": "upload_final_model", "key": f"upload_final_model:{study['id']}", "study_id": study["id"],
            "round": 0}
    with caplog.at_level("WARNING", logger="hospital_node"):
        assert node.handle_safely(item)
    assert len(node.client.named("upload_final_model")) == 1
    assert item["key"] in node.deferred  # the next polls skip it: no retry loop
    (rec,) = [r for r in caplog.records if "holds back the release" in r.getMessage()]
    assert "attestation_mismatch" in rec.getMessage()


def _poison_data(node, cell="Pre"):
    """The node's CSV gets a non-numeric cell in column f1, row 1 (a patient value that must stay local)."""
    path = node.cfg.data_csv
    lines = path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[1] = cell
    lines[1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_private_parts_absent(text: str, path) -> None:
    assert str(path) not in text and path.name not in text and str(path.parent) not in text
    assert "Pre" not in text and "row 1" not in text


def test_a_decline_for_bad_data_names_the_column_but_not_the_file_or_the_value(node, study, caplog):
    path = _poison_data(node)
    node.cfg = dataclasses.replace(node.cfg, limits=dataclasses.replace(node.cfg.limits, auto_approve=True))
    node.handle({"kind": "invitation", "study": {**study, "id": 8}})
    (call,) = node.client.named("decision")
    assert call[1:3] == (8, "decline")
    assert "column 'f1': a value is not numeric" in call[3]
    _assert_private_parts_absent(call[3], path)
    # the data manager still gets the whole story in the node's own log
    assert "'Pre'" in caplog.text and "row 1" in caplog.text


def test_a_job_refused_for_bad_data_sends_only_the_public_reason(node, study, caplog):
    path = _poison_data(node)
    node.handle(_train_item(study, 50, 1))
    (call,) = node.client.named("refuse")
    assert call[1:3] == (50, "data_error") and "column 'f1': a value is not numeric" in call[3]
    _assert_private_parts_absent(call[3], path)
    assert "'Pre'" in caplog.text


def test_a_missing_data_file_is_refused_without_its_path(node, study):
    path = node.cfg.data_csv
    path.rename(path.with_suffix(".moved"))
    node.handle(_train_item(study, 51, 1))
    (call,) = node.client.named("refuse")
    assert call[1:3] == (51, "data_error") and "data file does not exist" in call[3]
    assert str(path) not in call[3] and path.name not in call[3]


def test_a_data_file_that_is_not_utf8_is_a_data_error_without_its_bytes(node, study, caplog):
    path = node.cfg.data_csv
    path.write_bytes(path.read_bytes().replace(b"\n", b"\n\xff\xfe", 1))
    assert node.handle_safely(_train_item(study, 52, 1))
    (call,) = node.client.named("refuse")
    assert call[1:3] == (52, "data_error") and call[3] == "the node's data file is not UTF-8 text"
    assert str(path) in caplog.text  # the path stays in the node's log


def test_an_unexpected_local_failure_is_reported_without_its_message(node, study, caplog, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError(f"cannot map {node.cfg.data_csv} at byte 0xff")  # its text quotes a local path

    monkeypatch.setattr("hospital_node.context.load_study_data", broken)
    assert node.handle_safely(_train_item(study, 52, 1))
    (call,) = node.client.named("refuse")
    assert call[1:3] == (52, "node_error") and "RuntimeError" in call[3]
    assert "0xff" not in call[3] and str(node.cfg.data_csv) not in call[3]
    assert "0xff" in caplog.text  # ...and stays in the node's log
