"""Shamir t-of-n secret sharing of 32-byte secrets over GF(2^521 - 1).

The field is the Mersenne prime 2^521 - 1 (> 2^256, so any 32-byte secret is a field element;
a share is 66 bytes). A secret s is the constant term of a random polynomial of degree
threshold - 1; the share of the hospital with id h is the polynomial at x = h (ids are positive
and distinct, hence distinct non-zero points). Any ``threshold`` shares determine s (Lagrange
interpolation at 0); fewer shares are consistent with every secret, and ``reconstruct`` refuses
them. When more than ``threshold`` shares are given, all must lie on one polynomial of degree
threshold - 1, otherwise the shares are inconsistent (some share is wrong) and it says so.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping

from .errors import SecAggError

PRIME = (1 << 521) - 1
SHARE_BYTES = 66
SECRET_BYTES = 32


def _check_points(xs: Iterable[int]) -> list[int]:
    pts = list(xs)
    for x in pts:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 < x < PRIME:
            raise SecAggError(f"share point {x!r} must be a positive integer (a hospital id)")
    if len(set(pts)) != len(pts):
        raise SecAggError("share points must be distinct (each hospital holds one share)")
    return pts


def split(secret: bytes, xs: Iterable[int], threshold: int,
          randbelow: Callable[[int], int] = secrets.randbelow) -> dict[int, int]:
    """Shares of a 32-byte ``secret`` for the points ``xs``; any ``threshold`` of them recover it."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise SecAggError(f"a shared secret must be {SECRET_BYTES} bytes")
    pts = _check_points(xs)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= len(pts):
        raise SecAggError(f"threshold must be an integer in 1..{len(pts)} (the number of shares), got {threshold!r}")
    coeffs = [int.from_bytes(secret, "big")] + [randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in pts:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


class Interpolator:
    """Lagrange weights for one set of share points, reused for every secret shared over them
    (in a round every survivor sends shares of every secret, so the point set is the same)."""

    def __init__(self, points: Iterable[int], threshold: int) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise SecAggError(f"threshold must be a positive integer, got {threshold!r}")
        pts = sorted(_check_points(points))
        if len(pts) < threshold:
            raise SecAggError(f"{len(pts)} share(s) cannot reconstruct a secret shared with threshold {threshold}: "
                              f"wait for at least {threshold - len(pts)} more hospital(s) to send their shares")
        self.threshold = threshold
        self.base = pts[:threshold]
        self.extra = pts[threshold:]
        self._den = []
        for i, xi in enumerate(self.base):
            d = 1
            for j, xj in enumerate(self.base):
                if i != j:
                    d = d * (xi - xj) % PRIME
            self._den.append(d)
        self._at0 = self._weights(0)
        self._at_extra = {x: self._weights(x) for x in self.extra}

    def _weights(self, at: int) -> list[int]:
        full = 1
        for xj in self.base:
            full = full * (at - xj) % PRIME
        return [full * pow((at - xi) * d % PRIME, -1, PRIME) % PRIME for xi, d in zip(self.base, self._den)]

    def reconstruct(self, shares: Mapping[int, int]) -> bytes:
        """The 32-byte secret; every point of this interpolator must have a share."""
        missing = [x for x in self.base + self.extra if x not in shares]
        if missing:
            raise SecAggError(f"no share from hospital(s) {missing} for a secret all survivors must share")
        for x in self.base + self.extra:
            v = shares[x]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < PRIME:
                raise SecAggError(f"share of hospital {x} is not a field element")
        ys = [shares[x] for x in self.base]
        for x, w in self._at_extra.items():
            if sum(wi * yi for wi, yi in zip(w, ys)) % PRIME != shares[x]:
                raise SecAggError(f"shares are inconsistent (the share of hospital {x} does not lie on the polynomial "
                                  f"of the others): some hospital sent a wrong share")
        secret = sum(wi * yi for wi, yi in zip(self._at0, ys)) % PRIME
        if secret >> (8 * SECRET_BYTES):
            raise SecAggError("reconstructed value is not a 32-byte secret: some share is wrong")
        return secret.to_bytes(SECRET_BYTES, "big")


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares (point -> value)."""
    return Interpolator(shares, threshold).reconstruct(shares)


def share_to_hex(value: int) -> str:
    return value.to_bytes(SHARE_BYTES, "big").hex()


def share_from_hex(text: object, what: str = "share") -> int:
    if not isinstance(text, str) or len(text) != 2 * SHARE_BYTES:
        raise SecAggError(f"{what} must be {2 * SHARE_BYTES} hex characters")
    try:
        value = int.from_bytes(bytes.fromhex(text), "big")
    except ValueError:
        raise SecAggError(f"{what} is not hexadecimal") from None
    if value >= PRIME:
        raise SecAggError(f"{what} is not a field element (>= 2^521 - 1)")
    return value
