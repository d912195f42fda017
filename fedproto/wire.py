"""Framing of multi-part binary bodies (encrypted updates and aggregates).

Layout: b"FLW1" | u32 n_parts | n_parts x (u64 length | bytes), big-endian.
Raw bytes only: nothing here is ever unpickled or executed.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterable

from .errors import CodecError

MAGIC = b"FLW1"
_HEAD = struct.Struct(">4sI")
_LEN = struct.Struct(">Q")


def frame_overhead(n_parts: int) -> int:
    """Bytes of a frame of ``n_parts`` parts that are not part bytes (its header and length prefixes)."""
    return _HEAD.size + n_parts * _LEN.size


def frame_part_header(length: int) -> bytes:
    """The length prefix that precedes each part inside a frame."""
    return _LEN.pack(length)


def pack_parts(parts: Iterable[bytes]) -> bytes:
    parts = list(parts)
    out = [_HEAD.pack(MAGIC, len(parts))]
    for p in parts:
        out.append(frame_part_header(len(p)))
        out.append(p)
    return b"".join(out)


def _split(view: memoryview, off: int, n: int, max_part_bytes: int, what: str) -> list[bytes]:
    """Split exactly `n` length-prefixed parts from `view[off:]`; `what` names the container."""
    parts = []
    for i in range(n):
        if off + _LEN.size > len(view):
            raise CodecError(f"{what} truncated in the length of part {i} of {n}")
        (ln,) = _LEN.unpack_from(view, off)
        off += _LEN.size
        if ln > max_part_bytes:
            raise CodecError(f"part {i} is {ln} bytes, more than the {max_part_bytes} allowed")
        if off + ln > len(view):
            raise CodecError(f"{what} truncated: part {i} declares {ln} bytes, only {len(view) - off} remain")
        parts.append(bytes(view[off:off + ln]))
        off += ln
    if off != len(view):
        raise CodecError(f"{what} has {len(view) - off} trailing bytes after its {n} parts")
    return parts


def unpack_bare_parts(data: bytes, n: int, *, max_part_bytes: int = 1 << 30) -> list[bytes]:
    """Split a run of exactly `n` length-prefixed parts cut out of a frame (no frame header)."""
    return _split(memoryview(data), 0, n, max_part_bytes, "part run")


def unpack_parts(data: bytes, *, max_parts: int = 1_000_000, max_part_bytes: int = 1 << 30) -> list[bytes]:
    """Split a frame into its parts; raise CodecError on any inconsistency."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise CodecError(f"frame too short ({len(view)} bytes): expected a {MAGIC!r} header; send the output of "
                         "fedproto.wire.pack_parts")
    magic, n = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise CodecError(f"not an encrypted-update frame: header {bytes(magic)!r}, expected {MAGIC!r} (plaintext or "
                         "other data is refused)")
    if n > max_parts:
        raise CodecError(f"frame has {n} parts, more than the {max_parts} allowed here")
    return _split(view, _HEAD.size, n, max_part_bytes, "frame")


def read_frame_header(fh: BinaryIO) -> int:
    """Read and check the header of a frame stored in a file; return the part count."""
    head = fh.read(_HEAD.size)
    if len(head) != _HEAD.size:
        raise CodecError("frame too short: no header")
    magic, n = _HEAD.unpack(head)
    if magic != MAGIC:
        raise CodecError(f"not an encrypted-update frame: header {magic!r}, expected {MAGIC!r}")
    return n


def iter_frame_parts(fh: BinaryIO, n: int, *, max_part_bytes: int = 1 << 30):
    """Yield the parts of a frame from a file without loading the whole file."""
    for i in range(n):
        raw = fh.read(_LEN.size)
        if len(raw) != _LEN.size:
            raise CodecError(f"frame truncated in the length of part {i} of {n}")
        (ln,) = _LEN.unpack(raw)
        if ln > max_part_bytes:
            raise CodecError(f"part {i} is {ln} bytes, more than the {max_part_bytes} allowed")
        blob = fh.read(ln)
        if len(blob) != ln:
            raise CodecError(f"frame truncated: part {i} declares {ln} bytes, only {len(blob)} remain")
        yield blob
    if fh.read(1):
        raise CodecError(f"frame has trailing bytes after its {n} parts")
