"""A study names the data set each hospital uses; the node resolves the name against its
[datasets.NAME] config, declines a study whose data set it lacks (naming the data set, never a path
or a cell), refuses names that are paths, and ``check --study`` checks the study's own data set."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_node, write_csv
from nacl.public import PrivateKey

from fedproto.study import StudyConfig
from hospital_node.credentials import Credentials, save_credentials
from hospital_node.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def node(tmp_path, data_csv, study):
    """Hospital 3's node: data set "default" (100 rows, [data] csv) and "icu" (40 rows); auto_approve on."""
    n = make_node(tmp_path, data_csv, study, limits="max_epsilon = 1.0\nauto_approve = true")
    icu = tmp_path / "secret-ward" / "icu.csv"
    icu.parent.mkdir()
    write_csv(icu, n_rows=40, seed=1)
    n.cfg = dataclasses.replace(n.cfg, datasets={**n.cfg.datasets, "icu": icu})
    yield n
    n.ledger.close()


def _invite(node, study, sid, datasets):
    node.client.calls.clear()
    node.handle({"kind": "invitation", "study": {**study, "id": sid, "datasets": datasets}})
    (call,) = node.client.named("decision")
    return call


def test_the_node_uses_the_data_set_the_study_names_for_its_hospital(node, study):
    call = _invite(node, study, 20, {"default": "default", "hospitals": {"3": "icu"}})
    assert call[1:3] == (20, "approve")
    cfg = node.ledger.study_config(20)
    assert cfg.datasets == {"default": "default", "hospitals": {"3": "icu"}}  # the ledger keeps the name
    assert node.dataset_name(cfg) == "icu" and node.dataset(cfg).n_train + node.dataset(cfg).n_test == 40
    # another hospital's entry does not apply to this one; the default does
    call = _invite(node, study, 21, {"default": "default", "hospitals": {"4": "icu"}})
    assert call[1:3] == (21, "approve")
    cfg = node.ledger.study_config(21)
    assert node.dataset_name(cfg) == "default" and node.dataset(cfg).n_train + node.dataset(cfg).n_test == 100
    # one name for all hospitals
    assert _invite(node, study, 22, "icu")[1:3] == (22, "approve")
    assert node.dataset_name(node.ledger.study_config(22)) == "icu"


def test_a_missing_data_set_is_declined_naming_it_but_no_path(node, study, caplog):
    call = _invite(node, study, 23, {"default": "cohort2024"})
    assert call[1:3] == (23, "decline")
    reason = call[3]
    assert "no data set 'cohort2024'" in reason
    for private in (str(node.cfg.path), str(node.cfg.path.parent), "secret-ward", "icu", str(node.cfg.data_csv)):
        assert private not in reason
    assert node.ledger.study(23)["invitation_state"] == "declined"
    # the data manager's log says where to add it
    assert "[datasets.cohort2024]" in caplog.text and str(node.cfg.path) in caplog.text


@pytest.mark.parametrize("datasets", ["../x", {"default": "/etc/passwd"}, {"hospitals": {"3": "..\\x"}},
                                      {"hospitals": {"../3": "icu"}}, {"default": "a/b"}, {"default": ""}])
def test_a_data_set_name_that_is_a_path_is_an_invalid_study(node, study, datasets, monkeypatch):
    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: (opened.append(self), real_open(self, *a, **k))[1])
    call = _invite(node, study, 24, datasets)
    assert call[1:3] == (24, "decline") and "invalid study configuration" in call[3] and "datasets" in call[3]
    assert not [p for p in opened if p.suffix == ".csv"]  # no data file was read


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hospital_node", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_check_uses_the_data_set_the_study_names(tmp_path, study):
    default, icu = tmp_path / "default.csv", tmp_path / "icu.csv"
    write_csv(default, n_rows=100)
    write_csv(icu, n_rows=40, seed=1)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[platform]\nurl = "http://127.0.0.1:9"\n[data]\ncsv = "{default}"\n'
                   f'[datasets.icu]\npath = "{icu}"\n')
    save_credentials(tmp_path / "node-credentials.json",
                     Credentials(hospital_id=3, hospital_name="H", node_token="t",
                                 private_key=bytes(PrivateKey.generate()), platform_url="http://127.0.0.1:9"))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.remember_study(StudyConfig.from_wire({**study, "id": 30, "datasets": {"hospitals": {"3": "icu"}}}))
    ledger.remember_study(StudyConfig.from_wire({**study, "id": 31, "datasets": "cohort2024"}))
    ledger.close()
    r = _cli("check", "--config", str(cfg), "--study", "30")
    assert r.returncode == 0, r.stderr
    assert "data set 'icu'" in r.stdout and "40 rows match the schema" in r.stdout
    r = _cli("check", "--config", str(cfg), "--study", "30", "--dataset", "default")  # a named one instead
    assert r.returncode == 0 and "data set 'default'" in r.stdout and "100 rows match" in r.stdout
    r = _cli("check", "--config", str(cfg), "--study", "31")
    assert r.returncode == 2 and "no data set 'cohort2024'" in r.stderr and "[datasets.cohort2024]" in r.stderr
    r = _cli("check", "--config", str(cfg), "--study", "30", "--dataset", "../icu")
    assert r.returncode == 2 and "no data set '../icu'" in r.stderr and "Traceback" not in r.stderr
