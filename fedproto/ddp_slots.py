"""Slot layout of a distributed-DP upload, and the decoding of the unmasked sum.

Slot 0 = 1 (the contributor count, masked like the rest), slot 1 = 0 (no sample weight: a
hospital's record count is data-dependent and is not sent in this mode), data from slot
HEADER_SLOTS: the offset, clamped, noised integers packed k per slot (fedproto.secagg.bounds),
zero-padded to the study's vector length (the codec's part count times SLOTS). The node masks the
whole vector (SecAggClient.mask) and encrypts it (BfvPackedCodec.encrypt_slots); key holders
decrypt the homomorphic sum, add the round's correction mod t and call ``decode_sum``.
"""

from __future__ import annotations

import numpy as np

from .codec.bfv_params import HEADER_SLOTS
from .errors import CodecError, PoisonedAggregateError
from .secagg import PackingBounds, add_mod, offset_values, pack, unpack_sum


def encode(g: np.ndarray, noise: np.ndarray, bounds: PackingBounds, vector_len: int) -> np.ndarray:
    """Slot vector (uint64, each < t) of one hospital's integer sum g plus its noise share."""
    packed = pack(offset_values(g, noise, bounds), bounds)
    if HEADER_SLOTS + packed.size > vector_len:
        raise CodecError(f"{g.size} values need {HEADER_SLOTS + packed.size} slots, the round has {vector_len}")
    out = np.zeros(vector_len, dtype=np.uint64)
    out[0] = 1
    out[HEADER_SLOTS:HEADER_SLOTS + packed.size] = packed
    return out


def decode_sum(slot_sum: np.ndarray, correction: np.ndarray, n_values: int, bounds: PackingBounds,
               expected_contributors: int) -> np.ndarray:
    """Signed integer sums sum_i (clamp(g_i) + z_i) from the decrypted aggregate and the correction.

    The contributor count must equal the survivors the correction was computed for: anything else
    means an upload was added twice, left out, or the correction belongs to another survivor set."""
    s = add_mod(np.asarray(slot_sum, dtype=np.uint64), np.asarray(correction, dtype=np.uint64), bounds.modulus)
    count = int(s[0])
    if count != expected_contributors or int(s[1]) != 0:
        raise PoisonedAggregateError(f"the unmasked aggregate counts {count} contributors (weight slot {int(s[1])}) but "
                                     f"{expected_contributors} survivors were unmasked: uploads were added twice or "
                                     f"left out, or the correction is for another survivor set")
    n_slots = bounds.n_slots(n_values)
    tail = s[HEADER_SLOTS + n_slots:]
    if tail.size and int(tail.max()) != 0:
        raise PoisonedAggregateError("the padding slots of the unmasked aggregate are not zero: a masked upload was "
                                     "malformed or the correction does not match")
    return unpack_sum(s[HEADER_SLOTS:HEADER_SLOTS + n_slots], n_values, count, bounds)
