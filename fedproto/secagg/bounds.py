"""Exact no-wrap bounds for noised, offset, packed values (what a codec hook must respect).

Per coordinate hospital i holds an integer g_i (its rounded, clipped gradient sum) and a noise
share z_i with |z_i| <= M (the noise sampler's support bound). It sends
    v_i = clamp(g_i, -G, G) + z_i + (G + M)   in [0, V],  V = 2 (G + M).
Clamping each coordinate to [-G, G] is a projection onto a box, which is 1-Lipschitz in L1 and
L2, so it does not raise the sensitivity of the sum. k values share a slot as base-2^B digits,
slot = sum_d v_{jk+d} 2^(B d). For at most K contributors every digit sum is <= K V < 2^B (no
carry into the next digit) and every slot sum is <= sum_d K V 2^(B d) < t (no wrap mod t), so
the sum of the masked slots mod t, once unmasked, is the exact integer sum; the decoder reads
each digit and subtracts n_contributors (G + M). All checks use Python integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SecAggError
from .prg import check_modulus


def _pos_int(v: object, name: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise SecAggError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


@dataclass(frozen=True)
class PackingBounds:
    modulus: int
    max_contributors: int  # K
    sum_clip: int  # G: per-coordinate clamp of a hospital's integer sum
    noise_bound: int  # M: |noise share| <= M per coordinate
    digit_bits: int  # B
    digits_per_slot: int  # k

    @property
    def offset(self) -> int:
        return self.sum_clip + self.noise_bound

    @property
    def value_max(self) -> int:
        return 2 * self.offset

    def worst_slot_sum(self) -> int:
        top = self.max_contributors * self.value_max
        return sum(top << (self.digit_bits * d) for d in range(self.digits_per_slot))

    def check(self) -> None:
        """Raise SecAggError when K contributors could carry a digit or wrap a slot mod t."""
        check_modulus(self.modulus)
        top = self.max_contributors * self.value_max
        if top >= 1 << self.digit_bits:
            raise SecAggError(f"a digit sum can reach {top} >= 2^{self.digit_bits}: K * 2 (G + M) must be < 2^B; "
                              f"lower max_contributors, sum_clip or the noise bound, or widen the digits")
        if self.digit_bits * self.digits_per_slot > 64:
            raise SecAggError(f"{self.digits_per_slot} digits of {self.digit_bits} bits do not fit a 64-bit slot")
        if self.worst_slot_sum() >= self.modulus:
            raise SecAggError(f"the sum of {self.max_contributors} worst-case slots ({self.worst_slot_sum()}) would wrap mod "
                              f"t = {self.modulus}: pack fewer values per slot, or lower max_contributors, sum_clip or "
                              f"the noise bound")

    def n_slots(self, n_values: int) -> int:
        return -(-_pos_int(n_values, "number of values") // self.digits_per_slot)


def plan_packing(modulus: int, max_contributors: int, sum_clip: int, noise_bound: int,
                 digits_per_slot: int | None = None) -> PackingBounds:
    """Narrowest digits for K * 2(G + M), and as many per slot as fit (or exactly ``digits_per_slot``)."""
    check_modulus(modulus)
    k_max = _pos_int(max_contributors, "max_contributors", 1)
    g, m = _pos_int(sum_clip, "sum_clip"), _pos_int(noise_bound, "noise_bound")
    top = k_max * 2 * (g + m)
    b = max(1, top.bit_length())
    if digits_per_slot is None:
        k = 0
        while PackingBounds(modulus, k_max, g, m, b, k + 1).worst_slot_sum() < modulus and b * (k + 1) <= 64:
            k += 1
        if k == 0:
            raise SecAggError(f"even one value per slot can wrap: {k_max} * 2 * ({g} + {m}) >= t = {modulus}; lower "
                              f"max_contributors, sum_clip or the noise bound")
    else:
        k = _pos_int(digits_per_slot, "digits_per_slot", 1)
    out = PackingBounds(modulus, k_max, g, m, b, k)
    out.check()
    return out


def offset_values(g: np.ndarray, noise: np.ndarray, bounds: PackingBounds) -> np.ndarray:
    """v = clamp(g, -G, G) + noise + (G + M), int64 in [0, 2(G + M)]; refuses noise beyond M."""
    g = np.asarray(g)
    noise = np.asarray(noise)
    if g.shape != noise.shape or g.ndim != 1:
        raise SecAggError(f"gradient {g.shape} and noise {noise.shape} must be one-dimensional of equal length")
    if not (np.issubdtype(g.dtype, np.integer) and np.issubdtype(noise.dtype, np.integer)):
        raise SecAggError("gradient and noise must be integer arrays (round and sample before packing)")
    if noise.size and int(np.abs(noise).max()) > bounds.noise_bound:
        raise SecAggError(f"a noise share exceeds the bound M = {bounds.noise_bound} the packing was planned for")
    return np.clip(g.astype(np.int64), -bounds.sum_clip, bounds.sum_clip) + noise.astype(np.int64) + bounds.offset


def pack(values: np.ndarray, bounds: PackingBounds) -> np.ndarray:
    """Slots (uint64, each < t) holding ``values`` (in [0, V]) k per slot; the last slot is zero-padded."""
    v = np.asarray(values)
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
        raise SecAggError("values must be a one-dimensional integer array")
    if v.size and (int(v.min()) < 0 or int(v.max()) > bounds.value_max):
        raise SecAggError(f"values must lie in [0, {bounds.value_max}] (offset by G + M) before packing")
    k, b = bounds.digits_per_slot, bounds.digit_bits
    padded = np.zeros(bounds.n_slots(v.size) * k, dtype=np.uint64)
    padded[: v.size] = v.astype(np.uint64)
    digits = padded.reshape(-1, k)
    slots = np.zeros(digits.shape[0], dtype=np.uint64)
    for d in range(k):
        slots |= digits[:, d] << np.uint64(b * d)
    return slots


def unpack_sum(slot_sums: np.ndarray, n_values: int, n_contributors: int, bounds: PackingBounds) -> np.ndarray:
    """Signed per-coordinate sums sum_i (clamp(g_i) + z_i) from the unmasked slot sums (int64)."""
    s = np.asarray(slot_sums, dtype=np.uint64)
    if s.shape != (bounds.n_slots(n_values),):
        raise SecAggError(f"expected {bounds.n_slots(n_values)} slot sums for {n_values} values, got shape {s.shape}")
    if not 1 <= _pos_int(n_contributors, "n_contributors", 1) <= bounds.max_contributors:
        raise SecAggError(f"{n_contributors} contributors exceed the {bounds.max_contributors} the packing was planned for")
    k, b = bounds.digits_per_slot, bounds.digit_bits
    mask = np.uint64((1 << b) - 1)
    digits = np.stack([(s >> np.uint64(b * d)) & mask for d in range(k)], axis=1).reshape(-1)[:n_values]
    return digits.astype(np.int64) - n_contributors * bounds.offset
