"""The services package's plumbing: tasks enqueued by name are registered in a fresh process, the
chunk index keeps its stored JSON shape, and media files are written whole."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from fedproto import wire
from studies.services import storage

REPO = Path(__file__).resolve().parents[2]


def test_every_task_the_services_enqueue_is_registered_once_django_starts():
    """Services look tasks up by name; a process that never imports studies.tasks itself (the web
    server) must still find them, or the first upload of a round fails."""
    script = ("import django; django.setup()\n"
              "from celery import current_app\n"
              "from studies.services import common\n"
              "print(sorted(n for n in common.TASK_NAMES if n not in current_app.tasks))\n")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings",
           "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO / "platform", env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_chunk_index_is_stored_as_positional_lists():
    parts = [bytes([i]) * (10 + i) for i in range(5)]
    indexer = storage.ChunkIndexer(chunk_parts=2, offset=8)
    for p in parts:
        indexer.add(p)
    index = indexer.index()
    rows = storage.chunk_index_to_json(index)
    assert [r[:2] for r in rows] == [[0, 2], [2, 2], [4, 1]]
    offset = 8
    for row, group in zip(rows, [parts[0:2], parts[2:4], parts[4:5]]):
        framed = b"".join(wire.frame_part_header(len(p)) + p for p in group)
        assert row == [row[0], len(group), offset, len(framed), hashlib.sha256(framed).hexdigest()]
        offset += len(framed)
    assert storage.chunk_index_from_json(rows) == index
    assert storage.chunk_layout([index, storage.chunk_index_from_json(rows)]) == [(0, 2), (2, 2), (4, 1)]
    assert storage.chunk_layout([index, index[:2]]) is None  # uploads that disagree: one task


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b.bin"
    storage.atomic_write(target, b"first")
    storage.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]
