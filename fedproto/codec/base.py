"""Codec interface shared by the platform and the hospital nodes (see docs/PROTOCOL.md)."""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .. import wire
from ..errors import CodecError, SpecError


@dataclass(frozen=True)
class AggregateResult:
    mean_update: np.ndarray  # float64, length n_params
    total_weight: float  # sum over contributors of min(n_samples, weight_cap_samples)
    n_contributors: int


def public_params_sha256(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()


# Secret container: b"FPSC" | u8 version | u8 len(name) | name | u32 n | n x (u32 len | bytes).
# Raw bytes only, never pickle.
_SC_MAGIC = b"FPSC"


def pack_secret(codec_name: str, items: list[bytes]) -> bytes:
    name = codec_name.encode()
    out = [_SC_MAGIC, struct.pack(">BB", 1, len(name)), name, struct.pack(">I", len(items))]
    for it in items:
        out.append(struct.pack(">I", len(it)))
        out.append(it)
    return b"".join(out)


def unpack_secret(codec_name: str, blob: bytes) -> list[bytes]:
    try:
        if blob[:4] != _SC_MAGIC:
            raise ValueError("bad magic")
        ver, nlen = struct.unpack_from(">BB", blob, 4)
        name = blob[6 : 6 + nlen].decode()
        if ver != 1 or name != codec_name:
            raise CodecError(f"secret material is for codec {name!r} v{ver}, not {codec_name!r}; use the study's codec")
        off = 6 + nlen
        (n,) = struct.unpack_from(">I", blob, off)
        off += 4
        items = []
        for _ in range(n):
            (ln,) = struct.unpack_from(">I", blob, off)
            off += 4
            if off + ln > len(blob):
                raise ValueError("truncated")
            items.append(bytes(blob[off : off + ln]))
            off += ln
        if off != len(blob):
            raise ValueError("trailing bytes")
        return items
    except CodecError:
        raise
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise CodecError(f"not a {codec_name} secret blob ({exc}); pass the output of generate_secret()") from exc


def check_number(enc: dict, key: str, *, lo: float, hi: float, integer: bool) -> None:
    v = enc[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"encryption.{key} must be a number, got {v!r}")
    if integer and (not float(v).is_integer()):
        raise SpecError(f"encryption.{key} must be an integer, got {v!r}")
    if not math.isfinite(float(v)) or not (lo <= v <= hi):
        raise SpecError(f"encryption.{key}={v!r} is out of range: use a value in [{lo:g}, {hi:g}]")


class Codec:
    """Interface; see docs/PROTOCOL.md "Codec interface"."""

    name: str = ""

    def validate_config(self, enc: dict) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self, enc: dict) -> dict:  # pragma: no cover
        raise NotImplementedError

    def generate_secret(self, enc: dict) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def public_params(self, secret: bytes) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def encrypt_update(self, secret: bytes, enc: dict, update: np.ndarray, n_samples: int,
                       rng: np.random.Generator) -> list[bytes]:  # pragma: no cover
        raise NotImplementedError

    def decrypt_aggregate(self, secret: bytes, enc: dict, parts: list[bytes],
                          n_params: int) -> AggregateResult:  # pragma: no cover
        raise NotImplementedError

    def noise_budget(self, secret: bytes, enc: dict, parts: list[bytes]) -> int:  # pragma: no cover
        """Smallest noise budget (bits) of one upload's parts under the study key, decoding no value;
        0 for a ciphertext under another key."""
        raise CodecError(f"codec {self.name} cannot check an upload's noise budget")

    def load_params(self, public: bytes) -> Any:  # pragma: no cover
        raise NotImplementedError

    def n_parts(self, enc: dict, n_params: int) -> int:  # pragma: no cover
        raise NotImplementedError

    def inspect_part(self, ctx: Any, blob: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def max_part_bytes(self) -> int:  # pragma: no cover - interface
        """The largest ciphertext part this codec produces or accepts: the platform refuses a longer
        one from its length prefix, before reading it."""
        raise NotImplementedError

    def part_bytes(self) -> int | None:
        """The exact size of every part when the codec's parts all have one; None when it varies
        (compressed serialisations)."""
        return None

    def update_size(self, enc: dict, n_params: int) -> tuple[int, int]:
        """The smallest and the largest size in bytes of one update frame (fedproto.wire) of a model
        with ``n_params`` parameters: equal when the parts have a fixed size (part_bytes)."""
        n = self.n_parts(enc, n_params)
        exact = self.part_bytes()
        if exact is not None:
            return wire.frame_overhead(n) + n * exact, wire.frame_overhead(n) + n * exact
        return wire.frame_overhead(n) + n, wire.frame_overhead(n) + n * self.max_part_bytes()

    def accumulate(self, ctx: Any, acc: Any, upload: list[bytes], index: int) -> Any:  # pragma: no cover
        """Check upload #``index`` in full and add it to ``acc`` (None before the first upload);
        return the accumulator. A bad upload raises CodecError naming it and leaves ``acc`` as it was."""
        raise NotImplementedError

    def finish(self, ctx: Any, acc: Any) -> list[bytes]:  # pragma: no cover
        """The aggregate's parts from the accumulator."""
        raise NotImplementedError

    def aggregate(self, ctx: Any, uploads: Iterable[list[bytes]], *, max_uploads: int | None = None) -> list[bytes]:
        """Streaming sum: memory is one deserialised upload plus the accumulator."""
        acc = None
        for i, upload in enumerate(uploads):
            if max_uploads is not None and i >= max_uploads:
                raise CodecError(f"more than {max_uploads} uploads: the encryption is sized for at most "
                                 f"max_hospitals={max_uploads} (beyond it the sum is no longer exact)")
            acc = self.accumulate(ctx, acc, upload, i)
        if acc is None:
            raise CodecError("no uploads to aggregate")
        return self.finish(ctx, acc)

    def public_params_sha256(self, public: bytes) -> str:
        return public_params_sha256(public)


def upload_parts(upload: Iterable[bytes], index: int, expected: int | None) -> list[bytes]:
    """The parts of upload #``index``: at least one, and ``expected`` many (the first upload's count)."""
    parts = list(upload)
    if not parts:
        raise CodecError(f"upload #{index} has no parts")
    if expected is not None and len(parts) != expected:
        raise CodecError(f"upload #{index} has {len(parts)} parts, expected {expected} like upload #0")
    return parts


def as_update(update: Any, what: str = "update") -> np.ndarray:
    arr = np.asarray(update, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise SpecError(f"{what} contains NaN or infinite values; fix the training step before encrypting")
    return arr
