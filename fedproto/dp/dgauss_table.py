"""Fast vectorised discrete Gaussian sampling by table inversion, with a proven statistical distance.

For a rational sigma^2 the table holds the 128-bit CDF of N_Z(0, sigma^2) truncated to
|x| <= m, computed with Python integers; a sample is the number of CDF boundaries at or below a
uniform 128-bit integer u (two 64-bit words from ``random_bytes``, default ``os.urandom``), found
by ``numpy.searchsorted`` on the high words with an exact tie-break on the low words.

Statistical distance to the exact N_Z(0, sigma^2), per sample (``tv_bound``, computed, not
assumed), is at most the sum of
  * the tail cut: P[|X| > m] <= 2 (sigma^2 / m) exp(-m^2 / (2 sigma^2)) (sum <= integral, Mills'
    bound, normaliser >= 1), with m the smallest width making this <= 2^-tail_bits (default 128);
  * fixed-point error: weights exp(-x^2/(2 sigma^2)) = a^(x^2) with a = exp(-1/(2 sigma^2)) are
    built by the recurrence p_{x+1} = p_x a^(2x+1) at PRECISION = 384 fractional bits from a and
    a^2 correctly rounded (``decimal``); each floor loses at most 2^-PRECISION absolute, i.e. a
    relative 2^-(PRECISION - 200) on any value >= 2^-200 (all kept weights are, checked, and
    a^(2x+1) >= a^((x+1)^2)), so weight x is within (x + 1)(x + 2) 2^-(PRECISION - 201) relative
    and the normalised table within twice the largest such bound in total variation;
  * 128-bit quantisation of the CDF: at most (2m + 1) 2^-128.
With the defaults this is < 2^-100 per sample for every sigma the table accepts, so d
coordinates over R rounds are within d R 2^-100 of exact noise; a privacy guarantee (eps, delta)
for exact noise holds with delta + d R (1 + e^eps) tv_bound for this sampler (and for the truncation
it also guarantees |noise| <= m, which the packing bounds rely on).
"""

from __future__ import annotations

import decimal
import math
import os
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from .discrete_gaussian import as_fraction

PRECISION = 384
MAX_HALF_WIDTH = 1 << 20  # sigma up to ~7.8e4 at 2^-128 tails: 2.1e6 entries, ~100 MB of Python ints while building


def support_half_width(sigma2: Fraction, tail_bits: int = 128) -> int:
    """Smallest m >= 1 with 2 (sigma^2/m) exp(-m^2/(2 sigma^2)) <= 2^-(tail_bits + 1) (one bit of float slack)."""
    s2 = float(sigma2)
    target = -(tail_bits + 1) * math.log(2)

    def ok(m: int) -> bool:
        return math.log(2 * s2 / m) - m * m / (2 * s2) <= target

    m = max(1, int(math.sqrt(2 * s2 * (tail_bits + 1) * math.log(2))))
    m = max(1, int(math.sqrt(2 * s2 * (-target + max(0.0, math.log(2 * s2 / m))))))  # one fixed-point step
    while m > 1 and ok(m - 1):
        m -= 1
    while not ok(m):
        m += 1
    return m


def _exp_fixed(x: Fraction) -> int:
    """floor(exp(-x) * 2^PRECISION) for rational x >= 0 (decimal exp is correctly rounded)."""
    ctx = decimal.Context(prec=PRECISION // 3 + 40, rounding=decimal.ROUND_FLOOR)
    val = ctx.exp(ctx.divide(-decimal.Decimal(x.numerator), decimal.Decimal(x.denominator)))
    return int(ctx.multiply(val, decimal.Decimal(1 << PRECISION)).to_integral_value(rounding=decimal.ROUND_FLOOR))


def count_le_128(hi: np.ndarray, lo: np.ndarray, u_hi: np.ndarray, u_lo: np.ndarray) -> np.ndarray:
    """For sorted 128-bit boundaries c_k = hi_k 2^64 + lo_k: #{k : c_k <= u} for every u (int64)."""
    left = np.searchsorted(hi, u_hi, side="left")
    right = np.searchsorted(hi, u_hi, side="right")
    out = left.astype(np.int64)
    for a in np.nonzero(right > left)[0]:  # u_hi equals some boundaries' high word: ~n_entries 2^-64 of draws
        out[a] += int(np.searchsorted(lo[left[a]:right[a]], u_lo[a], side="right"))
    return out


class DiscreteGaussianTable:
    def __init__(self, sigma2: int | Fraction | float | str, tail_bits: int = 128) -> None:
        s2 = as_fraction(sigma2, "sigma^2")
        if s2 <= 0:
            raise ValueError("sigma^2 must be > 0 for a table sampler (zero noise needs no sampler)")
        m = support_half_width(s2, tail_bits)
        if m > MAX_HALF_WIDTH:
            raise ValueError(f"sigma^2 = {float(s2):.4g} needs a table of {2 * m + 1} entries (over {2 * MAX_HALF_WIDTH + 1}); "
                             f"use a coarser quantisation scale so the noise in integer units is smaller")
        self.sigma2 = s2
        self.half_width = m
        a2 = _exp_fixed(1 / s2)  # a^2
        b = _exp_fixed(1 / (2 * s2))  # a^(2x+1) at x = 0
        one = 1 << PRECISION
        p = one
        weights = [p]
        for _ in range(m):
            p = p * b >> PRECISION
            b = b * a2 >> PRECISION
            weights.append(p)
        if weights[-1] < 1 << (PRECISION - 200):
            raise ValueError("internal: a kept weight fell below 2^-200; the error bound would not hold")
        total = 2 * sum(weights) - weights[0]  # x = -m .. m, symmetric
        mask = (1 << 64) - 1
        self._hi = np.empty(2 * m, dtype=np.uint64)  # CDF boundary after x = -m .. m-1 (the last one is 2^128)
        self._lo = np.empty(2 * m, dtype=np.uint64)
        self._probs = np.empty(2 * m + 1)
        cum, prev = 0, 0
        for i in range(2 * m + 1):
            cum += weights[abs(i - m)]
            c = (cum << 128) // total if i < 2 * m else 1 << 128
            self._probs[i] = (c - prev) / 2.0 ** 128
            if i < 2 * m:
                self._hi[i], self._lo[i] = c >> 64, c & mask
            prev = c
        tail = 2 * float(s2) / m * math.exp(-m * m / (2 * float(s2)))
        fixed = 2 * (m + 1) * (m + 2) * 2.0 ** -(PRECISION - 201)
        self.tv_bound = tail + fixed + (2 * m + 1) * 2.0 ** -128

    @property
    def probabilities(self) -> np.ndarray:
        """P[X = x] of this sampler for x = -m..m (floats, for tests)."""
        return self._probs

    def sample(self, n: int, random_bytes: Callable[[int], bytes] = os.urandom) -> np.ndarray:
        """n samples as int64, every one in [-m, m]."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {n!r}")
        raw = random_bytes(16 * n)
        if len(raw) != 16 * n:
            raise ValueError("random_bytes returned the wrong number of bytes")
        words = np.frombuffer(raw, dtype="<u8").reshape(n, 2) if n else np.zeros((0, 2), dtype=np.uint64)
        return count_le_128(self._hi, self._lo, words[:, 0], words[:, 1]) - self.half_width
