"""bfv-packed-raw-v1: bfv-packed-v1's encoding and BFV parameters, with full ciphertexts in a raw format.

Same quantisation, digit packing, header slots, BFV parameters (N=4096, t < 2^60, q = 24/24/32-bit
primes) and noise analysis as bfv-packed-v1 (this class subclasses it); only the transport differs:

* the node encrypts symmetrically with SEAL as bfv-packed-v1 does, but into a full (non-seeded)
  ciphertext, and ships its raw residue arrays, each coefficient of residue i in exactly
  bit_length(q_i) bits (24, 24, 32 -> 3 + 3 + 4 bytes; 10 bytes per coefficient and polynomial);
* the platform never deserialises through SEAL: it checks the fixed header, the exact size and
  every coefficient < q_i, and adds residues mod q_i in numpy (add, then conditional subtract),
  vectorised over a whole upload. Aggregates use the same format;
* the decrypting node rebuilds SEAL's (uncompressed) ciphertext serialisation from the arrays,
  loads it (SEAL re-validates it) and decrypts as bfv-packed-v1 does.

Part format (little-endian), PART_BYTES = 44 + 2 * 10 * 4096 = 81964 bytes for 4096 slots:

    offset size
    0      4    magic b"FPBR"
    4      1    format version (1)
    5      1    number of polynomials (2: a size-2 ciphertext)
    6      1    number of coefficient primes (3)
    7      1    reserved (0)
    8      4    N, poly_modulus_degree (u32, 4096)
    12     32   SEAL parms_id of the study parameters (4 x u64, a hash of the parameters)
    44     ...  for each polynomial, for each prime q_i: N coefficients of BYTES[i] bytes each
                (little-endian), i.e. SEAL's own order (poly, prime, coefficient)

Upload and aggregate are ~20 B per slot (6.67 B/param with 3 values per slot), against 11.5 / 23.5
for bfv-packed-v1, but aggregation is an order of magnitude cheaper (measurements: docs/codec.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi
import zstandard

from ..errors import CodecError
from . import seal_io
from .base import upload_parts
from .bfv_packed import BfvNodeContext, BfvPackedCodec, BfvPlatformContext
from .bfv_params import COEFF_MODULUS, CT_META, POLY_DEGREE, SLOTS, ct_meta

NAME = "bfv-packed-raw-v1"
FORMAT_VERSION = 1
RAW_MAGIC = b"FPBR"
RAW_HEADER = struct.Struct("<4sBBBBI32s")  # magic, version, n_polys, n_primes, reserved, N, parms_id
CT_SIZE = 2  # polynomials of a fresh / summed BFV ciphertext
N_PRIMES = len(COEFF_MODULUS)
PRIME_BITS = tuple(q.bit_length() for q in COEFF_MODULUS)  # ceil(log2 q_i) for primes: 24, 24, 32
# Every prime of this parameter set is a whole number of bytes wide, so "exactly bit_length(q_i) bits
# per coefficient" is plain byte slicing (24-bit residues read as unaligned u32 & 0xFFFFFF).
assert all(b % 8 == 0 and b <= 32 for b in PRIME_BITS), PRIME_BITS
PRIME_BYTES = tuple(b // 8 for b in PRIME_BITS)
POLY_BYTES = POLY_DEGREE * sum(PRIME_BYTES)
BODY_BYTES = CT_SIZE * POLY_BYTES
PART_BYTES = RAW_HEADER.size + BODY_BYTES
_RES_OFFSETS = tuple(POLY_DEGREE * sum(PRIME_BYTES[:i]) for i in range(N_PRIMES))  # within a polynomial
# A 24-bit residue is read as 4 bytes at a 3-byte stride; its last read ends 1 byte past the residue,
# which is still inside the part because a wider (32-bit) residue always follows it.
assert PRIME_BYTES[-1] == 4
_ZERO_PID = bytes(32)
_SEAL_CT_COUNT = CT_SIZE * N_PRIMES * POLY_DEGREE
_CHUNK_PARTS = 16  # parts decoded and added at a time on the platform (1.3 MB of part bytes)


def _pid_bytes(parms_id: Any) -> bytes:
    return struct.pack("<4Q", *(int(x) for x in parms_id))


@dataclass
class RawUpload:
    """Residues of P parts: res[i] has shape (P, 2, N). decode_parts gives uint32 arrays (views of the bytes
    for 32-bit primes); the platform's accumulator holds uint32 for primes < 2^31, else uint64."""

    res: list[np.ndarray]
    n_parts: int


def parse_part(blob: Any, parms_id: bytes, what: str = "part") -> None:
    """Cheap checks of one raw part: type, header, parameters id, exact size. Raises CodecError."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CodecError(f"a ciphertext {what} must be bytes, got {type(blob).__name__}")
    n = len(blob)
    if bytes(blob[:2]) == b"\x5e\xa1":  # SEAL's magic 0xA15E: a SEAL serialisation, not our format
        kind = "a SEAL object"
        try:
            _, _, compr, _ = seal_io.parse_header(bytes(blob))
            pid = ct_meta(bytes(blob), compr)[:4]
            kind = "a SEAL plaintext" if not any(pid) else "a SEAL-serialised ciphertext (bfv-packed-v1 format?)"
        except (ValueError, CodecError):
            pass
        if kind == "a SEAL plaintext":
            raise CodecError(f"this {what} is a plaintext, not a ciphertext: the platform only accepts encrypted updates "
                             f"in the {NAME} format")
        raise CodecError(f"this {what} is {kind}, not a {NAME} part: send the parts returned by "
                         f"encrypt_update of this study's codec ({NAME})")
    if n < RAW_HEADER.size:
        raise CodecError(f"{what} of {n} bytes is shorter than the {RAW_HEADER.size}-byte {NAME} header (truncated upload)")
    magic, version, n_polys, n_primes, reserved, degree, pid = RAW_HEADER.unpack_from(blob, 0)
    if magic != RAW_MAGIC:
        raise CodecError(f"no {NAME} header (first bytes {bytes(blob[:4]).hex()}, expected {RAW_MAGIC.hex()}): "
                         f"send the parts returned by encrypt_update")
    if version != FORMAT_VERSION:
        raise CodecError(f"{NAME} format version {version} is not supported (this platform reads version "
                         f"{FORMAT_VERSION}); update the hospital node")
    if pid == _ZERO_PID or n_polys == 1:
        raise CodecError(f"this {what} is a plaintext (parms_id zero or a single polynomial), not a ciphertext: "
                         "the platform only accepts encrypted updates")
    if pid != parms_id:
        raise CodecError(f"ciphertext belongs to other encryption parameters (parms_id {pid[:8][::-1].hex()}..., "
                         f"expected {parms_id[:8][::-1].hex()}...): re-encrypt with this study's context")
    if n_polys != CT_SIZE or n_primes != N_PRIMES or degree != POLY_DEGREE or reserved != 0:
        raise CodecError(f"malformed {NAME} header (polynomials={n_polys}, primes={n_primes}, N={degree}, "
                         f"reserved={reserved}); expected a size-{CT_SIZE} ciphertext, {N_PRIMES} primes, N={POLY_DEGREE}")
    if n != PART_BYTES:
        how = "exceeds" if n > PART_BYTES else "falls short of"
        raise CodecError(f"{what} of {n} bytes {how} the exact {PART_BYTES} bytes of a {NAME} part "
                         f"({'padded' if n > PART_BYTES else 'truncated'} upload)")


def decode_parts(parts: list[bytes]) -> RawUpload:
    """Residue arrays of header-checked parts (no range check here)."""
    P = len(parts)
    buf = parts[0] if P == 1 else b"".join(parts)
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    res = []
    for i, nb in enumerate(PRIME_BYTES):
        view = np.ndarray((P, CT_SIZE, POLY_DEGREE), dtype="<u4", buffer=buf,
                          offset=RAW_HEADER.size + _RES_OFFSETS[i], strides=(PART_BYTES, POLY_BYTES, nb))
        res.append(view & np.uint32((1 << (8 * nb)) - 1) if nb < 4 else view)
    return RawUpload(res, P)


def check_ranges(up: RawUpload, label) -> None:
    """Every coefficient < q_i, and no transparent (second polynomial zero) part. label(j) names part j."""
    zero_c1 = np.ones(up.n_parts, dtype=bool)
    for i, (r, q) in enumerate(zip(up.res, COEFF_MODULUS)):
        m = r.max(axis=2)  # (P, 2)
        if int(m.max()) >= q:
            j = int(np.argmax(m.max(axis=1) >= q))
            raise CodecError(f"{label(j)}: a coefficient of residue {i} is >= its prime q_{i}={q} "
                             "(corrupted or forged ciphertext)")
        zero_c1 &= m[:, 1] == 0
    if zero_c1.any():
        raise CodecError(f"{label(int(np.argmax(zero_c1)))}: second polynomial is zero, a plaintext in disguise "
                         "(transparent ciphertext), not an encryption")


def encode_parts(res: list[np.ndarray], parms_id: bytes) -> list[bytes]:
    """Pack residue arrays (P, 2, N) per prime into raw parts."""
    P = res[0].shape[0]
    out = np.empty((P, PART_BYTES), dtype=np.uint8)
    out[:, :RAW_HEADER.size] = np.frombuffer(
        RAW_HEADER.pack(RAW_MAGIC, FORMAT_VERSION, CT_SIZE, N_PRIMES, 0, POLY_DEGREE, parms_id), dtype=np.uint8)
    body = out[:, RAW_HEADER.size:].reshape(P, CT_SIZE, POLY_BYTES)
    for i, nb in enumerate(PRIME_BYTES):
        seg = body[:, :, _RES_OFFSETS[i]:_RES_OFFSETS[i] + nb * POLY_DEGREE].reshape(P, CT_SIZE, POLY_DEGREE, nb)
        seg[...] = res[i].astype("<u4", copy=False).view(np.uint8).reshape(P, CT_SIZE, POLY_DEGREE, 4)[..., :nb]
    return [out[p].tobytes() for p in range(P)]


def _seal_ct_arrays(blob: bytes, parms_id: bytes) -> np.ndarray:
    """(2, 3, N) uint64 coefficients of a SEAL ciphertext serialisation (any compression), layout checked."""
    _, _, compr, _ = seal_io.parse_header(blob)
    body: bytes | memoryview = memoryview(blob)[seal_io.SEAL_HEADER_SIZE:]
    if compr == 2:
        body = zstandard.ZstdDecompressor().decompressobj().decompress(bytes(body))
    elif compr != 0:
        raise CodecError(f"unexpected SEAL compression mode {compr}")
    meta = CT_META.unpack_from(body, 0)
    if struct.pack("<4Q", *meta[:4]) != parms_id or meta[4] or meta[5] != CT_SIZE or meta[6] != POLY_DEGREE \
            or meta[7] != N_PRIMES:
        raise CodecError(f"SEAL ciphertext layout differs from what {NAME} expects ({meta[4:8]})")
    off = CT_META.size
    _, _, _, _, dcompr, _, dsize = seal_io.SEAL_HEADER.unpack_from(body, off)
    (count,) = struct.unpack_from("<Q", body, off + seal_io.SEAL_HEADER_SIZE)
    if dcompr != 0 or count != _SEAL_CT_COUNT or dsize != seal_io.SEAL_HEADER_SIZE + 8 + 8 * count \
            or len(body) != off + dsize:
        raise CodecError(f"SEAL ciphertext data layout differs from what {NAME} expects (count {count})")
    data = np.frombuffer(body, dtype="<u8", count=count, offset=off + seal_io.SEAL_HEADER_SIZE + 8)
    return data.reshape(CT_SIZE, N_PRIMES, POLY_DEGREE)


def _seal_ct_blob(coeffs: np.ndarray, parms_id: bytes, seal_minor: int) -> bytes:
    """SEAL's uncompressed Ciphertext serialisation of (2, 3, N) coefficients (inverse of _seal_ct_arrays)."""
    data_size = seal_io.SEAL_HEADER_SIZE + 8 + 8 * _SEAL_CT_COUNT
    total = seal_io.SEAL_HEADER_SIZE + CT_META.size + data_size
    return b"".join([
        seal_io.SEAL_HEADER.pack(seal_io.SEAL_MAGIC, seal_io.SEAL_HEADER_SIZE, 4, seal_minor, 0, 0, total),
        CT_META.pack(*struct.unpack("<4Q", parms_id), 0, CT_SIZE, POLY_DEGREE, N_PRIMES, 1.0, 1),
        seal_io.SEAL_HEADER.pack(seal_io.SEAL_MAGIC, seal_io.SEAL_HEADER_SIZE, 4, seal_minor, 0, 0, data_size),
        struct.pack("<Q", _SEAL_CT_COUNT),
        np.ascontiguousarray(coeffs, dtype="<u8").tobytes(),
    ])


def _add_mod(acc: list[np.ndarray], xs: list[np.ndarray], c0: int, *, subtract: bool = False) -> None:
    """acc[i][c0:c0+len] = (acc ± x) mod q_i for residues already < q_i, in place, numpy only."""
    for a, x, q in zip(acc, xs, COEFF_MODULUS):
        a = a[c0:c0 + x.shape[0]]
        qq = a.dtype.type(q)
        if subtract:  # a - x wraps around when x > a; adding q back then gives the smaller value
            np.subtract(a, x, out=a)
            np.minimum(a, a + qq, out=a)
        else:  # a + x < 2q fits (q < 2^31 in uint32, else uint64); a - q wraps above a when a < q
            np.add(a, x, out=a)
            np.minimum(a, a - qq, out=a)


class BfvPackedRawCodec(BfvPackedCodec):
    name = NAME
    encryption_description = ("symmetric (hospitals share the study secret key), full ciphertexts in a raw "
                              "format (24/24/32 bits per residue) that the platform adds with numpy")
    upload_bytes_per_slot = PART_BYTES / SLOTS
    aggregate_bytes_per_slot = PART_BYTES / SLOTS

    # ---------------------------------------------------------------- node side
    def _encrypt_slots(self, node: BfvNodeContext, slots: np.ndarray) -> list[bytes]:
        pid = _pid_bytes(node.context.first_parms_id())
        n_parts = slots.shape[0] // SLOTS
        coeffs = np.empty((N_PRIMES, n_parts, CT_SIZE, POLY_DEGREE), dtype=np.uint64)
        pt = sealapi.Plaintext()
        ct = sealapi.Ciphertext()
        for p in range(n_parts):
            node.encoder.encode(slots[p * SLOTS:(p + 1) * SLOTS].tolist(), pt)
            node.encryptor.encrypt_symmetric(pt, ct)  # full ciphertext (no seed)
            coeffs[:, p] = _seal_ct_arrays(seal_io.save_bytes(ct), pid).transpose(1, 0, 2)
        return encode_parts(list(coeffs), pid)

    def _load_aggregate_part(self, node: BfvNodeContext, blob: bytes, p: int) -> Any:
        pid = _pid_bytes(node.context.first_parms_id())
        label = f"aggregate part #{p}"
        try:
            parse_part(blob, pid)
        except CodecError as exc:
            raise CodecError(f"{label}: {exc}") from None
        up = decode_parts([bytes(blob)])
        check_ranges(up, lambda j: label)
        coeffs = np.stack([r[0].astype(np.uint64) for r in up.res], axis=1)  # (2, 3, N)
        ct = sealapi.Ciphertext()
        try:
            seal_io.load_into(ct, _seal_ct_blob(coeffs, pid, seal_io.parse_header(node.public)[1]), node.context)
        except Exception as exc:
            raise CodecError(f"{label} is not a ciphertext of this study ({exc})") from exc
        return ct

    # ---------------------------------------------------------------- platform side
    def max_part_bytes(self) -> int:
        return PART_BYTES

    def part_bytes(self) -> int:
        return PART_BYTES

    def inspect_part(self, ctx: BfvPlatformContext, blob: bytes) -> None:
        parse_part(blob, _pid_bytes(ctx.parms_id))

    def accumulate(self, ctx: BfvPlatformContext, acc: Any, upload: list[bytes], index: int) -> Any:
        """Add one upload to acc (a RawUpload) after checking it all (headers, sizes, every coefficient
        < q_i, no zero second polynomial); a bad upload raises CodecError naming the part and leaves acc
        as it was."""
        parts = upload_parts(upload, index, None if acc is None else acc.n_parts)
        pid = _pid_bytes(ctx.parms_id)
        for j, blob in enumerate(parts):
            try:
                parse_part(blob, pid)
            except CodecError as exc:
                raise CodecError(f"upload #{index} part #{j}: {exc}") from None
        P, C = len(parts), _CHUNK_PARTS
        if acc is None:  # own arrays: residues of primes < 2^31 in uint32, wider ones in uint64
            res = [np.empty((P, CT_SIZE, POLY_DEGREE), dtype=np.uint32 if q < (1 << 31) else np.uint64)
                   for q in COEFF_MODULUS]
            for c0 in range(0, P, C):
                up = decode_parts(parts[c0:c0 + C])
                check_ranges(up, lambda j, c0=c0: f"upload #{index} part #{c0 + j}")
                for r, x in zip(res, up.res):
                    r[c0:c0 + C] = x
            return RawUpload(res, P)
        # One pass, chunk by chunk (cache-sized: the accumulator of a 1e7-parameter model is ~110 MB):
        # each chunk is checked before it is added; if a later chunk is bad, the chunks already added
        # are subtracted again, so a bad upload leaves acc as it was.
        for c0 in range(0, P, C):
            up = decode_parts(parts[c0:c0 + C])
            try:
                check_ranges(up, lambda j, c0=c0: f"upload #{index} part #{c0 + j}")
            except CodecError:
                for b0 in range(0, c0, C):
                    _add_mod(acc.res, decode_parts(parts[b0:b0 + C]).res, b0, subtract=True)
                raise
            _add_mod(acc.res, up.res, c0)
        return acc

    def finish(self, ctx: BfvPlatformContext, acc: Any) -> list[bytes]:
        if acc is None:
            raise CodecError("no uploads to aggregate")
        return encode_parts(acc.res, _pid_bytes(ctx.parms_id))
