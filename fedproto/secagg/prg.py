"""PRG: a 32-byte seed -> n integers uniform in [0, modulus), exactly (no modulo bias).

Stream: SHAKE-256(domain || seed) read as little-endian 64-bit words. A word w is accepted iff
``w < limit = 2^64 - (2^64 mod modulus)`` (the largest multiple of the modulus that fits), and
then yields ``w mod modulus``; rejected words are skipped. Every accepted value is therefore
exactly uniform. The output is the first n accepted values of the stream, so it does not depend
on how the stream is read: ``expand_uniform(s, n, t)[:m] == expand_uniform(s, m, t)``.
Vectorised: the stream is read in one SHAKE call (sized for the expected rejection rate plus a
margin) and filtered with numpy; a short read is extended by a longer read of the same stream.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import SecAggError
from .kdf import SEED_BYTES

DOMAIN = b"fedproto-secagg-v1/prg\x00"
MAX_MODULUS = 1 << 62  # a sum of two values < 2^62 cannot overflow uint64


def check_modulus(modulus: int) -> int:
    if isinstance(modulus, bool) or not isinstance(modulus, int) or not 2 <= modulus < MAX_MODULUS:
        raise SecAggError(f"modulus must be an integer in [2, 2^62), got {modulus!r}")
    return modulus


def rejection_limit(modulus: int) -> int:
    """Words below this limit are accepted (2^64 when the modulus divides 2^64)."""
    return (1 << 64) - ((1 << 64) % check_modulus(modulus))


def expand_uniform(seed: bytes, n: int, modulus: int) -> np.ndarray:
    """n values uniform in [0, modulus) as uint64, a deterministic function of ``seed``."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise SecAggError(f"PRG seed must be {SEED_BYTES} bytes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SecAggError(f"PRG output length must be a non-negative integer, got {n!r}")
    limit = rejection_limit(modulus)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    accept = limit / float(1 << 64)
    words = int(n / accept + 8 * (n ** 0.5) + 64)
    xof = hashlib.shake_256(DOMAIN + seed)
    while True:
        stream = np.frombuffer(xof.digest(8 * words), dtype="<u8")
        kept = stream if limit == 1 << 64 else stream[stream < np.uint64(limit)]
        if kept.size >= n:
            return (kept[:n] % np.uint64(modulus)).astype(np.uint64)
        words *= 2
