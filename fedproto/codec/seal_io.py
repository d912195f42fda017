"""Bytes <-> SEAL objects.

TenSEAL's ``sealapi`` bindings only save to and load from file paths. This module
wraps them with short-lived files in a private (0700) directory, on /dev/shm when
it exists so that nothing touches a disk. Files are unlinked right after use.
Secret-key bytes pass through here too: the directory is private to this process's
user and each file lives for microseconds.
"""

from __future__ import annotations

import itertools
import os
import struct
import tempfile
import threading
from typing import Any

_DIR: str | None = None
_DIR_LOCK = threading.Lock()
_COUNTER = itertools.count()

SEAL_MAGIC = 0xA15E
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header_size, major, minor, compr_mode, reserved, size
SEAL_HEADER_SIZE = 16


def _dir() -> str:
    global _DIR
    if _DIR is None or not os.path.isdir(_DIR):
        with _DIR_LOCK:
            if _DIR is None or not os.path.isdir(_DIR):
                base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
                _DIR = tempfile.mkdtemp(prefix="fedproto-seal-", dir=base)  # mode 0700
    return _DIR


def _path() -> str:
    return os.path.join(_dir(), f"{os.getpid()}-{threading.get_ident()}-{next(_COUNTER)}")


def save_bytes(obj: Any) -> bytes:
    """Serialise a SEAL object (anything with ``save(path)``, Serializable included)."""
    path = _path()
    try:
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def load_into(obj: Any, data: bytes, *args: Any) -> Any:
    """``obj.load(*args, path)`` from bytes; returns obj. SEAL exceptions propagate."""
    path = _path()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        obj.load(*args, path)
        return obj
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def parse_header(blob: bytes) -> tuple[int, int, int, int]:
    """Return (major, minor, compr_mode, size) of a SEAL serialisation header, or raise ValueError."""
    if len(blob) < SEAL_HEADER_SIZE:
        raise ValueError(f"{len(blob)} bytes is shorter than a SEAL header (16 bytes)")
    magic, hsize, major, minor, compr, reserved, size = SEAL_HEADER.unpack_from(blob, 0)
    if magic != SEAL_MAGIC or hsize != SEAL_HEADER_SIZE:
        raise ValueError(f"no SEAL header (first bytes {bytes(blob[:4]).hex()}, expected 5ea110..)")
    if major != 4 or compr not in (0, 1, 2) or reserved != 0:
        raise ValueError(f"unsupported SEAL header (version {major}.{minor}, compression {compr})")
    if size != len(blob):
        raise ValueError(f"SEAL header says {size} bytes but the blob has {len(blob)} (truncated or padded)")
    return major, minor, compr, size
