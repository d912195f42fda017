"""A hospital installs the node alone: `pip install .` into an empty virtual environment gives a
working `python -m hospital_node` without Django, WeasyPrint or Playwright (pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=600, **kw)


def test_node_installs_and_runs_without_the_platform(tmp_path):
    venv = tmp_path / "venv"
    r = run(sys.executable, "-m", "venv", str(venv))
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    # A copy of the tracked sources, so the build writes nothing into the checkout.
    src = tmp_path / "src"
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"], capture_output=True, check=True)
    src.mkdir()
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    for f in ("pyproject.toml", "fedproto", "hospital_node"):  # the working tree's version, committed or not
        subprocess.run(["cp", "-r", str(REPO / f), str(src)], check=True)
    r = run(str(py), "-m", "pip", "install", "-q", str(src))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]

    r = run(str(py), "-m", "hospital_node", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "enrol" in r.stdout and "run" in r.stdout and "status" in r.stdout
    r = run(str(venv / "bin" / "hospital-node"), "--version", cwd=tmp_path)
    assert r.returncode == 0 and "hospital_node" in r.stdout, r.stdout + r.stderr

    installed = run(str(py), "-m", "pip", "list", "--format=freeze").stdout.lower()
    for absent in ("django", "djangorestframework", "celery", "weasyprint", "playwright", "gunicorn"):
        assert f"\n{absent}==" not in "\n" + installed, f"{absent} was installed with the node"
    for present in ("torch==", "opacus==", "tenseal=="):
        assert present in installed
    # The node's own modules import (the daemon pulls in torch, Opacus and TenSEAL).
    r = run(str(py), "-c", "import hospital_node.daemon, fedproto.codec; print('ok')", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
