"""Faults the node must survive: a second process on one ledger, a stale writer moving a job
backwards, a retried round (no second privacy spend), a discarded (409) upload and the connection
it leaves behind. Real ledger (SQLite), real node processes, a real HTTP server."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from nacl.public import PrivateKey
from recording_client import RecordingClient

from fedproto.codec import get_codec
from fedproto.study import StudyConfig
from fedproto.wire import unpack_parts
from hospital_node.client import PlatformClient
from hospital_node.config import load_config
from hospital_node.credentials import Credentials, save_credentials
from hospital_node.daemon import Node
from hospital_node.instance import lock_path
from hospital_node.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
PLAN = {"noise_multiplier": 1.3, "sample_rate": 0.1, "steps_per_job": 10, "n_train": 100, "target_epsilon": 1.0}


# ----------------------------------------------------------------------------- ledger

def test_a_job_state_never_moves_backwards(tmp_path, config):
    led = Ledger(tmp_path / "l.sqlite3")
    assert led.claim_job(config, 1, 1, PLAN)
    assert led.claim_job(config, 1, 1, None)  # claimed again after a crash mid-training: still ours
    assert led.set_job_state(1, "trained")
    led.record_spend(1, config.study_id, (1.3, 0.1, 10), {"epsilon": 0.3}, "f")
    assert led.set_job_state(1, "uploaded")
    # a late handler (today: "trained" after training, over a job another process uploaded)
    assert not led.set_job_state(1, "trained")
    assert not led.set_job_state(1, "spend_reported")
    assert not led.set_job_state(1, "failed")
    assert led.job(1)["state"] == "uploaded"
    with pytest.raises(ValueError, match="cannot be moved to 'claimed'"):
        led.set_job_state(1, "claimed")


@pytest.mark.parametrize("state", ["trained", "failed", "spend_recorded", "uploaded"])
def test_a_job_past_claimed_is_never_claimed_again(tmp_path, config, state):
    path = tmp_path / "l.sqlite3"
    first = Ledger(path)
    first.claim_job(config, 5, 1, PLAN)
    if state in ("spend_recorded", "uploaded"):
        first.record_spend(5, config.study_id, (1.3, 0.1, 10), {"epsilon": 0.3}, "f")
    if state != "spend_recorded":
        assert first.set_job_state(5, state)
    second = Ledger(path)  # another process on the same ledger
    assert not second.claim_job(config, 5, 1, PLAN)
    assert second.job(5)["state"] == state and len(second.history(config.study_id)) == (state in ("spend_recorded",
                                                                                               "uploaded"))


# ----------------------------------------------------------------------------- two processes

def _node_config(tmp_path: Path, data_csv: Path, url: str = "http://127.0.0.1:9") -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[platform]\nurl = "{url}"\n[data]\ncsv = "{data_csv}"\n[node]\npoll_wait_s = 1\n')
    cfg = load_config(path)
    save_credentials(cfg.credentials_file, Credentials(hospital_id=3, hospital_name="H", node_token="t",
                                                       private_key=bytes(PrivateKey.generate()), platform_url=url))
    return path


def _node_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hospital_node", *args]


def test_a_second_node_process_on_one_config_refuses_to_start(tmp_path, data_csv):
    config = _node_config(tmp_path, data_csv)
    ledger = load_config(config).ledger
    log = tmp_path / "first.log"
    with log.open("wb") as fh:
        first = subprocess.Popen(_node_cmd("run", "--config", str(config)), cwd=REPO, stdout=fh, stderr=fh)

    def holder() -> str:
        return lock_path(ledger).read_text().strip() if lock_path(ledger).exists() else ""

    try:
        t0 = time.monotonic()
        while holder() != str(first.pid):
            assert first.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 60, "the first node never took its lock"
            time.sleep(0.05)
        second = subprocess.run(_node_cmd("run", "--config", str(config)), cwd=REPO, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 1, second.stderr
        assert f"another node process (pid {first.pid}) is running on this ledger" in second.stderr
        assert first.poll() is None
        # status reads the ledger while the daemon runs (the platform is unreachable here: exit 1)
        status = subprocess.run(_node_cmd("status", "--config", str(config)), cwd=REPO, capture_output=True,
                                text=True, timeout=60)
        assert "enrolled: yes, hospital 3" in status.stdout and f"ledger {ledger}" in status.stdout, status
    finally:
        first.terminate()
        first.wait(timeout=30)
    # the lock dies with its process: a node starts again after it
    again = subprocess.run(_node_cmd("run", "--once", "--config", str(config)), cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert "another node process" not in again.stderr and "platform unreachable" in again.stderr


# ----------------------------------------------------------------------------- retries



def _node(tmp_path, data_csv, study, client) -> Node:
    cfg = load_config(_node_config(tmp_path, data_csv))
    creds = Credentials(hospital_id=3, hospital_name="H", node_token="t", private_key=bytes(PrivateKey.generate()),
                        platform_url=cfg.platform_url)
    node = Node(cfg, creds, client=client)
    codec = get_codec("bfv-packed-v1")
    node.ledger.remember_study(StudyConfig.from_wire(study))
    secret = codec.generate_secret(study["encryption"])
    node.ledger.set_secret(study["id"], secret, codec.public_params_sha256(codec.public_params(secret)))
    return node


def test_a_retried_round_resends_the_same_update_at_no_privacy_cost(tmp_path, data_csv, study):
    node = _node(tmp_path, data_csv, study, RecordingClient())
    node.handle({"kind": "train", "job_id": 11, "study": study, "round": 1})
    spent = node.ledger.study(study["id"])["epsilon_spent"]
    ledger_before = node.ledger.history(study["id"])
    # round 1 failed elsewhere (quorum missed): the platform retries it with a new job
    node.handle({"kind": "train", "job_id": 12, "study": study, "round": 1})
    (first, retry) = node.client.named("upload_update")
    assert retry[1] == 12 and retry[3] == {**first[3], "steps": 0, "epsilon_round": 0.0, "epsilon": spent,
                                           "reuses_job": 11}
    assert node.ledger.history(study["id"]) == ledger_before and len(ledger_before) == 1
    row = node.ledger.study(study["id"])
    assert row["epsilon_spent"] == spent and row["rounds_trained"] == 1
    assert node.ledger.job(12)["state"] == "uploaded"
    # a fresh encryption (not a replay of the same bytes) of the same update
    assert retry[2] != first[2]
    codec, secret = get_codec("bfv-packed-v1"), node.ledger.secret(study["id"])
    a, b = (codec.decrypt_aggregate(secret, study["encryption"], unpack_parts(c[2]), 5).mean_update for c in (first, retry))
    # equal up to one step of the codec's stochastic rounding (a fresh encryption rounds afresh)
    assert np.abs(a).max() > 0.01 and np.allclose(a, b, atol=0.01)
    # the next round (another global model) trains and spends
    node.client.get_aggregate = lambda sid, r: (first[2], 1)
    node.handle({"kind": "train", "job_id": 13, "study": study, "round": 2})
    assert node.client.named("upload_update")[-1][3]["steps"] > 0
    assert len(node.ledger.history(study["id"])) == 2 and node.ledger.trained_update(study["id"])["job_id"] == 13
    node.ledger.close()


# ----------------------------------------------------------------------------- 409 and the connection

class Platform(BaseHTTPRequestHandler):
    """Answers PUT .../update with 409 WITHOUT reading the body (as a server that refuses before reading
    does), other requests with 200; records every request line and the connection it came on (its client address and port: an
    object id could be reused once the first connection is gone)."""

    protocol_version = "HTTP/1.1"
    put_code = "job_closed"
    requests: list[tuple[str, str, tuple]] = []

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        self.requests.append(("PUT", self.path, self.client_address))
        self._answer(409, {"error": "job 5 is expired and round 1 is failed: it no longer accepts updates",
                           "code": self.put_code})

    def do_POST(self):
        self.requests.append(("POST", self.path, self.client_address))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(200 if "heartbeat" in self.path else 409, {"ok": True, "error": "x", "code": "wrong_state"})


@pytest.fixture
def platform():
    Platform.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_after_an_error_answer_to_an_upload_the_next_request_opens_a_fresh_connection(platform):
    client = PlatformClient(platform, "t", 10)
    frame = b"\x01" * 200_000
    conflict = client.upload_update(5, frame)
    assert conflict is not None and conflict.code == "job_closed"
    assert client.heartbeat({}) == {"ok": True, "error": "x", "code": "wrong_state"}
    (put, heartbeat) = Platform.requests
    assert put[:2] == ("PUT", "/api/node/jobs/5/update") and heartbeat[:2] == ("POST", "/api/node/heartbeat")
    assert put[2] != heartbeat[2]


@pytest.mark.parametrize("code, state", [("job_closed", "failed"), ("duplicate", "uploaded")])
def test_a_discarded_upload_is_logged_as_such_and_never_sent_again(tmp_path, data_csv, study, platform, caplog,
                                                                   code, state):
    Platform.put_code = code
    try:
        node = _node(tmp_path, data_csv, study, RecordingClient())
        config = StudyConfig.from_wire(study)
        node.ledger.claim_job(config, 5, 1, PLAN)
        frame_path = tmp_path / "job-5.flw"
        frame_path.write_bytes(b"\x01" * 1000)
        node.ledger.record_spend(5, config.study_id, (1.3, 0.1, 10), {"epsilon": 0.3}, str(frame_path))
        node.client = PlatformClient(platform, "t", 10)
        with caplog.at_level(logging.INFO, logger="hospital_node"):
            node.resume_pending()
            node.resume_pending()  # the daemon's next loop
        assert [r[:2] for r in Platform.requests] == [("PUT", "/api/node/jobs/5/update"),
                                                      ("POST", "/api/node/jobs/5/privacy-spend")]
        job = node.ledger.job(5)
        assert job["state"] == state and not frame_path.exists()
        if code == "job_closed":
            assert "discarded the update (409 job_closed" in caplog.text and "uploaded" not in caplog.text
            assert job["error"].startswith("discarded: 409 job_closed")
        else:
            assert "already held this update (409 duplicate)" in caplog.text
        assert len(node.ledger.history(config.study_id)) == 1  # the spend stays counted, once
        node.ledger.close()
    finally:
        Platform.put_code = "job_closed"


# ----------------------------------------------------------------------------- final model

def test_a_key_holder_that_is_not_the_custodian_releases_the_final_model(tmp_path, data_csv, study):
    """The custodian is gone for good: the platform asks another key holder (it holds the key and
    rebuilds the global models from the aggregates)."""
    study = {**study, "custodian_hospital_id": 5, "rounds": 1}  # this node is hospital 3
    node = _node(tmp_path, data_csv, study, RecordingClient())
    node.handle({"kind": "train", "job_id": 11, "study": study, "round": 1})
    frame = node.client.named("upload_update")[0][2]
    node.client.get_aggregate = lambda sid, r: (frame, 1)
    node.handle({"kind": "upload_final_model", "study_id": study["id"], "round": 1})
    (call,) = node.client.named("upload_final_model")
    node.handle({"kind": "evaluate", "study_id": study["id"], "round": 1})
    (report,) = node.client.named("report")
    sha = report[3]["model_sha256"]  # the model it attests in its round report
    assert call[1] == study["id"] and hashlib.sha256(call[2]).hexdigest() == sha
    node.ledger.close()
