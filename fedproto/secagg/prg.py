"""PRG: a 32-byte seed -> n integers uniform in [0, modulus), exactly (no modulo bias).

Stream (v2): AES-256-CTR keystream, key SHA-256(DOMAIN || seed), initial counter block zero
(one key per seed, so a (key, counter) pair is never reused), read as little-endian 64-bit words.
With b = bit length of (modulus - 1), a word w yields v = w >> (64 - b), uniform on [0, 2^b); v is
accepted iff v < modulus (probability > 1/2, and 1 - 2^-46 for the BFV plaintext modulus just
below 2^60), rejected values are skipped. Every accepted value is therefore exactly uniform on
[0, modulus) with no division at all. The output is the first n accepted values of the stream, so
it does not depend on how the stream is read: ``expand_uniform(s, n, t)[:m] == expand_uniform(s, m, t)``.
Vectorised: n words are read in one call (AES-NI through ``cryptography``, about 10x SHAKE-256),
shifted with numpy, and only when some were rejected is the stream read further.

v1 (SHAKE-256, ``w < 2^64 - 2^64 mod t`` then ``w mod t``) gave other masks for the same seed:
every party of a round must run the same version (the round's masks cancel only then; a mixed
round fails the decoder's contributor-count and zero-padding checks, it does not decode wrongly).
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import SecAggError
from .kdf import SEED_BYTES

DOMAIN = b"fedproto-secagg-v2/prg-aes256ctr\x00"
MAX_MODULUS = 1 << 62  # a sum of two values < 2^62 cannot overflow uint64
_ZERO_BLOCK = bytes(16)


def check_modulus(modulus: int) -> int:
    if isinstance(modulus, bool) or not isinstance(modulus, int) or not 2 <= modulus < MAX_MODULUS:
        raise SecAggError(f"modulus must be an integer in [2, 2^62), got {modulus!r}")
    return modulus


def value_shift(modulus: int) -> int:
    """Right shift turning a 64-bit word into a candidate on [0, 2^b), b = bit length of modulus - 1."""
    return 64 - (check_modulus(modulus) - 1).bit_length()


def acceptance(modulus: int) -> float:
    """Probability that one word yields a value (modulus / 2^b)."""
    return modulus / float(1 << (64 - value_shift(modulus)))


def keystream(seed: bytes):
    """The seed's AES-256-CTR encryptor; ``.update(bytes(k))`` returns the next k stream bytes."""
    key = hashlib.sha256(DOMAIN + seed).digest()
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_BLOCK)).encryptor()


def expand_uniform(seed: bytes, n: int, modulus: int) -> np.ndarray:
    """n values uniform in [0, modulus) as uint64, a deterministic function of ``seed``."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise SecAggError(f"PRG seed must be {SEED_BYTES} bytes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SecAggError(f"PRG output length must be a non-negative integer, got {n!r}")
    shift = np.uint64(value_shift(modulus))
    t = np.uint64(modulus)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    stream = keystream(seed)
    out = np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8") >> shift  # a fresh, writable array
    bad = out >= t
    if not bad.any():
        return out
    kept = [out[~bad]]
    have = kept[0].size
    accept = acceptance(modulus)
    while have < n:  # read on: the next words of the same stream
        need = n - have
        more = np.frombuffer(stream.update(bytes(8 * int(need / accept + 8 * need ** 0.5 + 16))), dtype="<u8") >> shift
        more = more[more < t]
        kept.append(more)
        have += more.size
    return np.concatenate(kept)[:n]
