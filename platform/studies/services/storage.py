"""Media files of studies: encrypted uploads, aggregates (whole and by chunk) and the released
model, all under MEDIA_ROOT. Rows store paths relative to MEDIA_ROOT.

Files appear whole or not at all (a temporary file in the same folder, then os.replace), and the
files later summed are read back against the SHA-256 recorded when they were accepted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

from django.conf import settings

from fedproto import wire
from fedproto.errors import CodecError

from ..models import Round, Study


class StoredFileError(CodecError):
    """A stored file cannot be read or changed on disk since it was accepted. A CodecError, so
    aggregation treats it like any other bad upload (records why, goes on without it)."""


# ---------------------------------------------------------------- paths

def media_path(relative: str) -> Path:
    return Path(settings.MEDIA_ROOT) / relative


def relative(path: Path) -> str:
    """The path to store in a row: relative to MEDIA_ROOT."""
    return str(path.relative_to(settings.MEDIA_ROOT))


def updates_dir(rnd: Round) -> Path:
    """The folder of one round attempt's uploads (created if missing)."""
    d = Path(settings.MEDIA_ROOT) / "updates" / f"study_{rnd.study_id}" / f"round_{rnd.number}_{rnd.attempt}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def update_path(rnd: Round, job_id: int) -> Path:
    return updates_dir(rnd) / f"job_{job_id}.bin"


def aggregate_path(rnd: Round) -> Path:
    return Path(settings.MEDIA_ROOT) / "aggregates" / f"study_{rnd.study_id}" / f"round_{rnd.number}_{rnd.attempt}.bin"


def chunk_path(rnd: Round, index: int) -> Path:
    return (Path(settings.MEDIA_ROOT) / "aggregates" / f"study_{rnd.study_id}"
            / f"round_{rnd.number}_{rnd.attempt}_chunks" / f"chunk_{index}.bin")


def final_model_path(study: Study) -> Path:
    return Path(settings.MEDIA_ROOT) / "models" / f"study_{study.pk}_final.safetensors"


# ---------------------------------------------------------------- writes

def atomic_write(path: Path, data: bytes) -> None:
    """Write path whole: a reader sees the old file or the new one, never a part. The temporary
    name is unique, so two workers writing the same file (a redelivered task) do not mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Received:
    """An upload streamed to a temporary file, not yet in place (see place / discard)."""
    path: Path
    size: int
    sha256: str


def receive(directory: Path, prefix: str, stream: BinaryIO, content_length: int) -> Received:
    """Copy at most content_length bytes of stream into a new temporary file in directory, hashing
    as it goes. size < content_length means the sender stopped early; the caller decides."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".part")
    sha = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            remaining = content_length
            while remaining > 0:
                chunk = stream.read(min(1 << 20, remaining))
                if not chunk:
                    break
                out.write(chunk)
                sha.update(chunk)
                size += len(chunk)
                remaining -= len(chunk)
    except BaseException:
        os.unlink(tmp)
        raise
    return Received(Path(tmp), size, sha.hexdigest())


def place(received: Received, path: Path) -> None:
    os.replace(received.path, path)


def discard(received: Received) -> None:
    os.unlink(received.path)


# ---------------------------------------------------------------- verified reads

def read(relative_path: str) -> bytes:
    return media_path(relative_path).read_bytes()


def read_verified(relative_path: str, sha256: str, *, label: str) -> bytes:
    """The whole file, checked against the SHA-256 recorded when it was accepted. label names the
    file in the error ("stored upload of job 7")."""
    try:
        data = media_path(relative_path).read_bytes()
    except OSError as exc:
        raise StoredFileError(f"{label} cannot be read: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StoredFileError(f"{label} changed on disk since it was accepted (sha256 differs)")
    return data


def read_range_verified(relative_path: str, offset: int, n_bytes: int, sha256: str, *, label: str) -> bytes:
    """n_bytes from offset, checked against the SHA-256 recorded for that range."""
    try:
        with open(media_path(relative_path), "rb") as fh:
            fh.seek(offset)
            data = fh.read(n_bytes)
    except OSError as exc:
        raise StoredFileError(f"{label} cannot be read: {exc.strerror}") from None
    if len(data) != n_bytes or hashlib.sha256(data).hexdigest() != sha256:
        raise StoredFileError(f"{label} changed on disk since it was accepted")
    return data


# ---------------------------------------------------------------- chunk index

@dataclass(frozen=True)
class ChunkRange:
    """One chunk of an upload's frame: parts first_part .. first_part + n_parts - 1, stored as
    n_bytes from offset (each part with its frame header) whose SHA-256 is sha256. Several
    workers each add one chunk over all uploads of a round."""
    first_part: int
    n_parts: int
    offset: int
    n_bytes: int
    sha256: str

    def to_json(self) -> list:
        return [self.first_part, self.n_parts, self.offset, self.n_bytes, self.sha256]

    @classmethod
    def from_json(cls, row: list) -> ChunkRange:
        first_part, n_parts, offset, n_bytes, sha256 = row
        return cls(int(first_part), int(n_parts), int(offset), int(n_bytes), str(sha256))


def chunk_index_from_json(rows: Iterable[list]) -> list[ChunkRange]:
    """EncryptedUpdate.chunks ([[first_part, n_parts, offset, n_bytes, sha256], ...]) as ChunkRanges."""
    return [ChunkRange.from_json(row) for row in rows]


def chunk_index_to_json(index: Iterable[ChunkRange]) -> list[list]:
    return [c.to_json() for c in index]


class ChunkIndexer:
    """Builds the chunk index of a frame while its parts are read in order: a new chunk every
    chunk_parts parts, starting at byte offset (just past the frame header)."""

    def __init__(self, *, chunk_parts: int, offset: int):
        self.chunk_parts = max(1, chunk_parts)
        self._offset = offset
        self._n = 0
        self._done: list[ChunkRange] = []
        self._open: tuple[int, int, int] | None = None  # first part, offset, bytes of the chunk being read
        self._sha = hashlib.sha256()

    def add(self, part: bytes) -> None:
        if self._n % self.chunk_parts == 0:
            self._close()
            self._open = (self._n, self._offset, 0)
            self._sha = hashlib.sha256()
        framed = wire.frame_part_header(len(part))
        first, start, n_bytes = self._open
        self._open = (first, start, n_bytes + len(framed) + len(part))
        self._sha.update(framed)
        self._sha.update(part)
        self._offset += len(framed) + len(part)
        self._n += 1

    def _close(self) -> None:
        if self._open is not None:
            first, start, n_bytes = self._open
            self._done.append(ChunkRange(first, self._n - first, start, n_bytes, self._sha.hexdigest()))
            self._open = None

    def index(self) -> list[ChunkRange]:
        self._close()
        return list(self._done)


def chunk_layout(indexes: Iterable[list[ChunkRange]]) -> list[tuple[int, int]] | None:
    """The layout [(first part, parts), ...] shared by every index, or None if they differ or
    there is a single chunk (no chunked aggregation). Only the part ranges must agree: each
    upload's byte ranges are its own (a zstd-compressed ciphertext has its own size)."""
    layouts = {tuple((c.first_part, c.n_parts) for c in index) for index in indexes}
    if len(layouts) != 1:
        return None
    layout = list(layouts.pop())
    return layout if len(layout) > 1 else None
