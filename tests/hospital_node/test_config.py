"""Node configuration: defaults, relative paths, clear errors (exit code 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hospital_node.config import load_config
from hospital_node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[platform]
url = "https://fl.example.org/"
credentials_file = "secrets/creds.json"
[data]
csv = "data/patients.csv"
[node]
ledger = "state/ledger.sqlite3"
poll_wait_s = 5
[limits]
max_epsilon = 2.0
allowed_models = ["logistic_regression"]
auto_approve = true
"""


def _cfg(tmp_path, text):
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_good_config_resolves_paths_against_its_folder(tmp_path):
    cfg = load_config(_cfg(tmp_path, GOOD))
    assert cfg.platform_url == "https://fl.example.org"
    assert cfg.credentials_file == tmp_path / "secrets/creds.json"
    assert cfg.data_csv == tmp_path / "data/patients.csv"
    assert cfg.ledger == tmp_path / "state/ledger.sqlite3"
    assert cfg.work_dir == tmp_path / "work"
    assert cfg.poll_wait_s == 5 and cfg.request_timeout_s == 30
    assert cfg.limits.max_epsilon == 2.0 and cfg.limits.allowed_models == ("logistic_regression",)
    assert cfg.limits.auto_approve is True and cfg.grad_sample_mode == "fused"


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace('url = "https://fl.example.org/"\n', ""), r"missing platform\.url"),
    (lambda t: t.replace('csv = "data/patients.csv"', ""), r"missing data\.csv"),
    (lambda t: t.replace("max_epsilon = 2.0", 'max_epsilon = "lots"'), r"limits\.max_epsilon must be a number"),
    (lambda t: t.replace("poll_wait_s = 5", "poll_wait_s = 99"), r"node\.poll_wait_s must be an integer between 0 and 30"),
    (lambda t: t.replace('["logistic_regression"]', '["resnet"]'), r"limits\.allowed_models has unknown model type"),
    (lambda t: t.replace("auto_approve = true", 'auto_approve = "yes"'), r"limits\.auto_approve must be true or false"),
    (lambda t: t + "\n[extra]\nx = 1\n", r"unknown section \[extra\]"),
    (lambda t: t.replace("poll_wait_s = 5", "pol_wait = 5"), r"unknown key\(s\) node\.pol_wait"),
    (lambda t: t.replace("[data]", "[data"), r"not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, edit, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_cfg(tmp_path, edit(GOOD)))


def test_cli_bad_config_exits_2_without_traceback(tmp_path):
    p = _cfg(tmp_path, GOOD.replace("max_epsilon = 2.0", "max_epsilon = -1"))
    r = subprocess.run([sys.executable, "-m", "hospital_node", "status", "--config", str(p)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "limits.max_epsilon" in r.stderr and "Traceback" not in r.stderr


def test_cli_run_without_credentials_says_enrol(tmp_path):
    p = _cfg(tmp_path, GOOD)
    r = subprocess.run([sys.executable, "-m", "hospital_node", "run", "--once", "--config", str(p)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "enrol" in r.stderr and "Traceback" not in r.stderr


def test_cli_grad_sample_mode_accepts_every_engine_and_names_them_on_a_typo():
    from hospital_node.cli import build_parser
    from hospital_node.config import GRAD_SAMPLE_MODES

    for mode in GRAD_SAMPLE_MODES:
        assert build_parser().parse_args(["run", "--config", "n.toml", "--grad-sample-mode", mode]).grad_sample_mode == mode
    r = subprocess.run([sys.executable, "-m", "hospital_node", "run", "--config", "n.toml", "--grad-sample-mode", "fuse"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'fuse'" in r.stderr and "'fused'" in r.stderr


@pytest.mark.parametrize("url, warned", [
    ("http://fl.example.org", True),
    ("http://10.0.0.5:8000/", True),
    ("http://[2001:db8::1]:8000", True),
    ("https://fl.example.org", False),
    ("http://127.0.0.1:8000", False),
    ("http://127.8.0.1", False),
    ("http://localhost:8000", False),
    ("http://[::1]:8000", False),
])
def test_plain_http_to_another_host_is_warned_about(url, warned):
    from hospital_node.config import plain_http_warning

    warning = plain_http_warning(url)
    assert (warning is not None) == warned
    if warned:
        assert "https://" in warning and url in warning


@pytest.mark.parametrize("url, warned", [("http://fl.example.org", True), ("https://fl.example.org", False),
                                         ("http://127.0.0.1:9", False)])
def test_cli_run_logs_the_plain_http_warning_at_start(tmp_path, url, warned):
    p = _cfg(tmp_path, GOOD.replace('url = "https://fl.example.org/"', f'url = "{url}"'))
    r = subprocess.run([sys.executable, "-m", "hospital_node", "run", "--once", "--config", str(p)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "enrol" in r.stderr  # no credentials: it stops right after the warning
    assert ("WARNING" in r.stderr and "plain http://" in r.stderr) == warned, r.stderr


DATASETS = GOOD.replace('[data]\ncsv = "data/patients.csv"\n', '[datasets.cohort2024]\npath = "data/c24.csv"\n'
                                                                 '[datasets.default]\npath = "/srv/main.csv"\n')


def test_several_named_data_sets(tmp_path):
    cfg = load_config(_cfg(tmp_path, DATASETS))
    assert cfg.datasets == {"cohort2024": tmp_path / "data/c24.csv", "default": Path("/srv/main.csv")}
    assert cfg.dataset_path("cohort2024") == tmp_path / "data/c24.csv"
    assert cfg.dataset_path() == cfg.data_csv == Path("/srv/main.csv")
    with pytest.raises(ConfigError, match=r"no data set 'other' \(known: cohort2024, default\).*\[datasets\.other\]"):
        cfg.dataset_path("other")


def test_the_single_csv_config_is_the_default_data_set(tmp_path):
    cfg = load_config(_cfg(tmp_path, GOOD))
    assert cfg.datasets == {"default": tmp_path / "data/patients.csv"} and cfg.dataset_path() == cfg.data_csv


@pytest.mark.parametrize("extra, match", [
    ('[datasets.default]\npath = "x.csv"\n', r"'default' is given twice"),
    ('[datasets."bad name!"]\npath = "x.csv"\n', r"data set name 'bad name!'"),
    ('[datasets.c]\npath = "x.csv"\nrows = 3\n', r"\[datasets\.c\] .* takes exactly one key"),
    ('[datasets.c]\npath = 7\n', r"datasets\.c\.path must be a file path"),
    ('datasets = 3\n', r"datasets must be tables"),
])
def test_bad_data_set_tables_are_named(tmp_path, extra, match):
    text = extra + GOOD if extra.startswith("datasets =") else GOOD + extra
    with pytest.raises(ConfigError, match=match):
        load_config(_cfg(tmp_path, text))
