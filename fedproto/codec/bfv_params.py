"""BFV parameters shared by the bfv-packed codecs, and the digit-packing layout they allow.

N = 4096 slots, plain modulus t = largest prime < 2^60 with t = 1 mod 2N, coefficient primes of 24,
24 and 32 bits (80 bits, well under the 109-bit 128-bit-security bound for N=4096; SEAL checks it
with sec_level tc128). With only these primes, SEAL cannot drop a "special" prime (the product of
the first two is < t), so ciphertexts live at the key level and no key switching exists at all.
The 24/24/32-bit sizes are what SEAL's zstd serialisation stores most compactly (docs/codec.md).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import tenseal.sealapi as sealapi
import zstandard

from ..errors import CodecError
from . import seal_io

POLY_DEGREE = 4096
COEFF_BITS = (24, 24, 32)
HEADER_SLOTS = 2  # slot 0 of part 0: the weight, slot 1: the contributor count; data from slot 2
# SEAL's ciphertext metadata: parms_id, is_ntt_form, size, poly_degree, coeff_mod_count, scale, correction
CT_META = struct.Struct("<4QBQQQdQ")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for a in small:  # deterministic for n < 3.3e24
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def batching_prime_below(bound: int, n: int) -> int:
    """Largest prime t < bound with t = 1 mod 2n (needed for batching)."""
    m = 2 * n
    t = (bound - 2) // m * m + 1
    while t > m:
        if _is_prime(t):
            return t
        t -= m
    raise ValueError("no batching prime found")


PLAIN_MODULUS = batching_prime_below(1 << 60, POLY_DEGREE)  # 1152921504606830593


def make_parms() -> sealapi.EncryptionParameters:
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(POLY_DEGREE)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(POLY_DEGREE, list(COEFF_BITS)))
    parms.set_plain_modulus(PLAIN_MODULUS)
    return parms


_REF_PARMS = make_parms()
COEFF_MODULUS = tuple(m.value() for m in _REF_PARMS.coeff_modulus())
SLOTS = POLY_DEGREE


def layout(enc: dict) -> tuple[int, int]:
    """(B digit bits, k values per slot) for a validated config."""
    top = enc["max_hospitals"] * ((1 << enc["quant_bits"]) - 1)
    B = top.bit_length()
    k = 0
    while True:
        worst = sum(top << (B * d) for d in range(k + 1))  # every hospital sends the max everywhere
        if worst >= PLAIN_MODULUS or B * (k + 1) > 64:
            break
        k += 1
    return B, k


def seal_context(parms) -> Any:
    ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise CodecError(f"SEAL refuses the parameters: {ctx.parameters_error_message()}")
    return ctx


def check_parms(parms, name: str) -> None:
    if parms.scheme() != sealapi.SCHEME_TYPE.BFV:
        raise CodecError(f"parameters are for scheme {parms.scheme().name}, {name} needs BFV")
    if parms.poly_modulus_degree() != POLY_DEGREE:
        raise CodecError(f"poly_modulus_degree {parms.poly_modulus_degree()} != {POLY_DEGREE} of {name}")
    if parms.plain_modulus().value() != PLAIN_MODULUS:
        raise CodecError(f"plain modulus {parms.plain_modulus().value()} != {PLAIN_MODULUS} of {name}")
    cm = tuple(m.value() for m in parms.coeff_modulus())
    if cm != COEFF_MODULUS:
        raise CodecError(f"coefficient modulus {cm} != {COEFF_MODULUS} of {name}")


def ct_meta(blob: bytes, compr: int) -> tuple:
    body = memoryview(blob)[seal_io.SEAL_HEADER_SIZE:]
    need = CT_META.size
    try:
        if compr == 2:
            head = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read(need)
        elif compr == 1:
            head = zlib.decompressobj().decompress(bytes(body), need)
        else:
            head = bytes(body[:need])
    except (zstandard.ZstdError, zlib.error) as exc:
        raise CodecError(f"ciphertext body does not decompress ({exc}): corrupted upload, re-send it") from exc
    if len(head) < need:
        raise CodecError("ciphertext body is too short to hold ciphertext metadata (truncated upload)")
    return CT_META.unpack(head)
