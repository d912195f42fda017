"""Masks modulo the plaintext modulus t, and their removal.

Hospital j uploads  y_j = x_j + PRG(b_j) + sum_{i in U1, i != j} sgn(j, i) PRG(s_ji)  (mod t)
with sgn(j, i) = +1 if j < i else -1 and s_ji = s_ij the pairwise seed. Over the survivors U2
the pairwise masks between survivors cancel, leaving
  sum_{j in U2} y_j = sum x_j + sum_{j in U2} PRG(b_j) + sum_{j in U2, i in D} sgn(j, i) PRG(s_ji)
with D = U1 \\ U2 the hospitals that dropped after sharing. ``correction`` is minus that residual;
adding it to the decrypted (or homomorphically summed) aggregate leaves sum x_j mod t, exactly.
One y_j alone is uniform mod t: PRG(b_j) alone already makes it so, and the pairwise masks keep
it so even for whoever learns b_j after the round.

Vectors are numpy uint64 with every value in [0, t), t < 2^62 (no uint64 overflow in a + b).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .errors import SecAggError
from .prg import check_modulus, expand_uniform


def check_vector(values: np.ndarray, n: int, modulus: int, what: str = "vector") -> np.ndarray:
    """``values`` as uint64 of length n with every value in [0, modulus), or a clear error."""
    check_modulus(modulus)
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise SecAggError(f"{what} must be one-dimensional of length {n} (the round's vector_len), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise SecAggError(f"{what} must hold integers (quantised values mod t), got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= modulus):
        raise SecAggError(f"{what} holds values outside [0, {modulus}): reduce them mod t before masking")
    return arr.astype(np.uint64)


def add_mod(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    out = a + b
    out %= np.uint64(modulus)
    return out


def sub_mod(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    out = a + (np.uint64(modulus) - b)
    out %= np.uint64(modulus)
    return out


def add_signed_mask(acc: np.ndarray, seed: bytes, sign: int, modulus: int) -> np.ndarray:
    mask = expand_uniform(seed, acc.shape[0], modulus)
    return add_mod(acc, mask, modulus) if sign > 0 else sub_mod(acc, mask, modulus)


def signed_mask_sum(n: int, modulus: int, signed_seeds: Iterable[tuple[bytes, int]],
                    start: np.ndarray | None = None) -> np.ndarray:
    """(start + sum_k sign_k PRG(seed_k)) mod modulus, fused: a negative mask enters as t - m (in
    (0, t]), and the uint64 accumulator is reduced mod t only when one more term could overflow it
    (every (2^64 - 1) // t terms: 15 for t just below 2^60), not after every mask. Equal, value for
    value, to chaining add_signed_mask over the same seeds (tests/fedproto/test_secagg.py)."""
    t = np.uint64(check_modulus(modulus))
    acc = np.zeros(n, dtype=np.uint64) if start is None else start.astype(np.uint64, copy=True)
    room = (0xFFFF_FFFF_FFFF_FFFF - (modulus - 1)) // modulus  # terms <= t that fit above a value < t
    used = 0
    for seed, sign in signed_seeds:
        mask = expand_uniform(seed, n, modulus)
        if sign < 0:
            np.subtract(t, mask, out=mask)
        if used == room:
            acc %= t
            used = 0
        acc += mask
        used += 1
    acc %= t
    return acc


def pair_sign(me: int, peer: int) -> int:
    """+1 for the hospital with the smaller id, -1 for the other: the pair's masks cancel in a sum."""
    if me == peer:
        raise SecAggError("a hospital has no pairwise mask with itself")
    return 1 if me < peer else -1


def mask_vector(values: np.ndarray, n: int, me: int, self_seed: bytes, pair_seeds: Mapping[int, bytes],
                modulus: int) -> np.ndarray:
    """y = values + PRG(self_seed) + sum_peer sgn(me, peer) PRG(pair_seeds[peer])  (mod modulus)."""
    out = check_vector(values, n, modulus, "update")
    signed = [(self_seed, 1)] + [(pair_seeds[peer], pair_sign(me, peer)) for peer in sorted(pair_seeds)]
    return signed_mask_sum(n, modulus, signed, start=out)


def correction(n: int, modulus: int, self_seeds: Iterable[bytes], dropped_pairs: Iterable[tuple[int, int, bytes]]) -> np.ndarray:
    """Minus the residual mask of a sum over the survivors (add it to the aggregate mod t).

    ``self_seeds``: the survivors' self-mask seeds; ``dropped_pairs``: (survivor j, dropped i,
    s_ji) for every survivor j and every hospital i that dropped after sharing."""
    signed = [(seed, 1) for seed in self_seeds]
    signed += [(seed, pair_sign(survivor, dropped)) for survivor, dropped, seed in dropped_pairs]
    residual = signed_mask_sum(n, modulus, signed)
    return sub_mod(np.zeros(n, dtype=np.uint64), residual, modulus)


def sum_mod(vectors: Iterable[np.ndarray], n: int, modulus: int) -> np.ndarray:
    """Sum of vectors mod t (what the homomorphic sum of the uploads decrypts to)."""
    acc = np.zeros(n, dtype=np.uint64)
    for v in vectors:
        acc = add_mod(acc, check_vector(v, n, modulus), modulus)
    return acc
