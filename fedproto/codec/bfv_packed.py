"""bfv-packed-v1: BFV (SEAL via tenseal.sealapi) with batching and digit packing.

Parameters (fixed for this codec, so the platform can check them): bfv_params.py, N = 4096
slots, plain modulus t < 2^60, coefficient primes of 24, 24 and 32 bits.

Encoding of one update (float64 flat delta, length n):
  w = min(n_samples, cap) / cap;  x = clip(update * w, -c, c)
  q = stochastic_round((x + c) / step), step = 2c / (2^qb - 1), q in [0, 2^qb - 1]
  k quantised values per slot as base-2^B digits, B = bit_length(max_hospitals * (2^qb - 1)),
  k = largest with  sum_d max_hospitals*(2^qb-1) * 2^(B d) < t  (checked with Python ints).
  Slot 0 of part 0 = min(n_samples, cap), slot 1 = 1 (contributor count), data from slot 2.
Sums of up to max_hospitals uploads are exact integers; the node decodes
  mean = (sum_q * step - n_contributors * c) / (total_weight / cap).
Uploads are seeded symmetric ciphertexts (the second polynomial is a PRNG seed).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi

from ..errors import CodecError, PoisonedAggregateError, SpecError
from . import seal_io
from .base import AggregateResult, Codec, as_update, check_number, pack_secret, public_params_sha256, unpack_secret, upload_parts
from .bfv_params import (
    COEFF_BITS,
    COEFF_MODULUS,
    CT_META,
    HEADER_SLOTS,
    PLAIN_MODULUS,
    POLY_DEGREE,
    SLOTS,
    check_parms,
    ct_meta,
    layout,
    make_parms,
    seal_context,
)

NAME = "bfv-packed-v1"
MAX_HOSPITALS_LIMIT = 1000
# Measured serialised sizes per slot (zstd, see docs/codec.md): seeded upload / full aggregate.
UPLOAD_BYTES_PER_SLOT = 11.5
AGGREGATE_BYTES_PER_SLOT = 23.5
PARAMS_MAX_BYTES = 1024  # a parameters-only blob is ~70 bytes; any key is tens of KiB

DEFAULTS = {"codec": NAME, "max_hospitals": 200, "quant_bits": 12, "update_clip": 1.0, "weight_cap_samples": 1000}


@dataclass
class BfvNodeContext:
    context: Any
    encryptor: Any
    decryptor: Any
    encoder: Any
    public: bytes


@dataclass
class BfvPlatformContext:
    """What the platform holds: encryption parameters only."""

    context: Any
    evaluator: Any
    parms_id: list[int]
    public_sha256: str



class BfvPackedCodec(Codec):
    name = NAME
    encryption_description = "symmetric, seeded (hospitals share the study secret key); aggregates are full ciphertexts"
    upload_bytes_per_slot = UPLOAD_BYTES_PER_SLOT
    aggregate_bytes_per_slot = AGGREGATE_BYTES_PER_SLOT

    def __init__(self) -> None:
        self._node_cache: dict[bytes, BfvNodeContext] = {}
        self._platform_cache: dict[bytes, BfvPlatformContext] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- config
    def validate_config(self, enc: dict) -> dict:
        defaults = {**DEFAULTS, "codec": self.name}
        if not isinstance(enc, dict):
            raise SpecError("encryption must be an object like " + repr(defaults))
        unknown = set(enc) - set(defaults)
        if unknown:
            raise SpecError(f"unknown encryption setting(s) {sorted(unknown)} for {self.name}; allowed: {sorted(defaults)}")
        out = {**defaults, **enc}
        if out["codec"] != self.name:
            raise SpecError(f"encryption.codec is {out['codec']!r}, this codec is {self.name!r}")
        check_number(out, "max_hospitals", lo=1, hi=MAX_HOSPITALS_LIMIT, integer=True)
        check_number(out, "quant_bits", lo=4, hi=24, integer=True)
        check_number(out, "update_clip", lo=1e-9, hi=1e6, integer=False)
        check_number(out, "weight_cap_samples", lo=1, hi=10**9, integer=True)
        out["max_hospitals"] = int(out["max_hospitals"])
        out["quant_bits"] = int(out["quant_bits"])
        out["update_clip"] = float(out["update_clip"])
        out["weight_cap_samples"] = int(out["weight_cap_samples"])
        if out["max_hospitals"] * out["weight_cap_samples"] >= PLAIN_MODULUS:
            raise SpecError("max_hospitals * weight_cap_samples overflows the plain modulus; lower weight_cap_samples")
        B, k = layout(out)
        if k < 1:  # cannot happen for the ranges above; kept as a guard
            raise SpecError(f"quant_bits={out['quant_bits']} with max_hospitals={out['max_hospitals']} does not fit one "
                            "slot; lower either")
        return out

    def describe(self, enc: dict) -> dict:
        enc = self.validate_config(enc)
        B, k = layout(enc)
        L = (1 << enc["quant_bits"]) - 1
        return {
            "codec": self.name,
            "scheme": "BFV (Microsoft SEAL via TenSEAL sealapi), batching",
            "poly_modulus_degree": POLY_DEGREE,
            "plain_modulus": PLAIN_MODULUS,
            "plain_modulus_bits": PLAIN_MODULUS.bit_length(),
            "coeff_mod_bit_sizes": list(COEFF_BITS),
            "coeff_modulus": list(COEFF_MODULUS),
            "security_level_bits": 128,
            "encryption": self.encryption_description,
            "slots_per_ciphertext": SLOTS,
            "header_slots": HEADER_SLOTS,
            "values_per_slot": k,
            "digit_bits": B,
            "quant_bits": enc["quant_bits"],
            "quant_step": 2 * enc["update_clip"] / L,
            "update_clip": enc["update_clip"],
            "weight_cap_samples": enc["weight_cap_samples"],
            "max_hospitals": enc["max_hospitals"],
            "headroom": {"digit_bits_over_quant_bits": B - enc["quant_bits"],
                         "max_exact_contributors": ((1 << B) - 1) // L},
            "upload_bytes_per_param": self.upload_bytes_per_slot / k,
            "aggregate_bytes_per_param": self.aggregate_bytes_per_slot / k,
        }

    def n_parts(self, enc: dict, n_params: int) -> int:
        enc = self.validate_config(enc)
        _, k = layout(enc)
        return max(1, -(-(HEADER_SLOTS + -(-int(n_params) // k)) // SLOTS))

    # ---------------------------------------------------------------- node side
    def generate_secret(self, enc: dict) -> bytes:
        self.validate_config(enc)
        parms = make_parms()
        ctx = seal_context(parms)
        sk = sealapi.KeyGenerator(ctx).secret_key()
        return pack_secret(self.name, [seal_io.save_bytes(parms), seal_io.save_bytes(sk)])

    def _node(self, secret: bytes) -> BfvNodeContext:
        key = sha256(secret).digest()
        with self._lock:
            hit = self._node_cache.get(key)
        if hit is not None:
            return hit
        params_blob, sk_blob = self._split_secret(secret)
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
        try:
            seal_io.load_into(parms, params_blob)
        except Exception as exc:
            raise CodecError(f"secret material holds unreadable parameters ({exc})") from exc
        check_parms(parms, self.name)
        ctx = seal_context(parms)
        sk = sealapi.SecretKey()
        try:
            seal_io.load_into(sk, sk_blob, ctx)
        except Exception as exc:
            raise CodecError(f"secret key does not load for these parameters ({exc})") from exc
        node = BfvNodeContext(ctx, sealapi.Encryptor(ctx, sk), sealapi.Decryptor(ctx, sk), sealapi.BatchEncoder(ctx), params_blob)
        with self._lock:
            if len(self._node_cache) > 16:
                self._node_cache.clear()
            self._node_cache[key] = node
        return node

    def _split_secret(self, secret: bytes) -> tuple[bytes, bytes]:
        items = unpack_secret(self.name, secret)
        if len(items) != 2:
            raise CodecError(f"{self.name} secret blob must hold parameters and a secret key")
        return items[0], items[1]

    def public_params(self, secret: bytes) -> bytes:
        return self._node(secret).public

    def quantise(self, enc: dict, update: np.ndarray, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Weighted, clipped, stochastically rounded offset integers (uint64) and the weight numerator."""
        cap = enc["weight_cap_samples"]
        wnum = min(int(n_samples), cap)
        c = enc["update_clip"]
        L = (1 << enc["quant_bits"]) - 1
        step = 2.0 * c / L
        x = np.clip(update * (wnum / cap), -c, c)
        y = (x + c) / step
        fl = np.floor(y)
        q = fl + (rng.random(y.shape[0]) < (y - fl))
        return np.clip(q, 0, L).astype(np.uint64), wnum

    def encode_slots(self, enc: dict, update: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Validated, quantised, packed slot values (uint64, a multiple of SLOTS long; header slots first)."""
        upd = as_update(update)
        if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
            raise SpecError(f"n_samples must be a positive integer, got {n_samples!r}")
        B, k = layout(enc)
        q, wnum = self.quantise(enc, upd, n_samples, rng)
        n = q.shape[0]
        n_slots_data = -(-n // k)
        if n_slots_data * k != n:
            q = np.concatenate([q, np.zeros(n_slots_data * k - n, dtype=np.uint64)])
        q = q.reshape(n_slots_data, k)
        packed = q[:, 0].copy()
        for d in range(1, k):
            packed |= q[:, d] << np.uint64(B * d)
        n_parts = max(1, -(-(HEADER_SLOTS + n_slots_data) // SLOTS))
        slots = np.zeros(n_parts * SLOTS, dtype=np.uint64)
        slots[0] = wnum
        slots[1] = 1
        slots[HEADER_SLOTS:HEADER_SLOTS + n_slots_data] = packed
        return slots

    def encrypt_update(self, secret: bytes, enc: dict, update: np.ndarray, n_samples: int,
                       rng: np.random.Generator) -> list[bytes]:
        enc = self.validate_config(enc)
        node = self._node(secret)
        slots = self.encode_slots(enc, update, n_samples, rng)
        return self._encrypt_slots(node, slots)

    def _encrypt_slots(self, node: BfvNodeContext, slots: np.ndarray) -> list[bytes]:
        """One seeded symmetric ciphertext (SEAL serialisation, zstd) per SLOTS slots."""
        out = []
        pt = sealapi.Plaintext()
        for p in range(slots.shape[0] // SLOTS):
            node.encoder.encode(slots[p * SLOTS:(p + 1) * SLOTS].tolist(), pt)
            out.append(seal_io.save_bytes(node.encryptor.encrypt_symmetric(pt)))
        return out

    def encrypt_slots(self, secret: bytes, slots: np.ndarray) -> list[bytes]:
        """Encrypt ready slot values (uint64 < t, a multiple of SLOTS long): the distributed-DP path,
        whose slots are masked (fedproto/ddp_slots.py) rather than made by ``encode_slots``."""
        s = np.asarray(slots, dtype=np.uint64)
        if s.ndim != 1 or not s.size or s.size % SLOTS:
            raise CodecError(f"slots must be a non-empty multiple of {SLOTS} long, got shape {s.shape}")
        return self._encrypt_slots(self._node(secret), s)

    def decrypt_slots(self, secret: bytes, enc: dict, parts: list[bytes], expected: int) -> tuple[np.ndarray, int]:
        """Decrypted slot values of an aggregate (or one upload) of ``expected`` parts, and the smallest
        noise budget; a part with no budget left was encrypted under another key (poisoned)."""
        node = self._node(secret)
        if len(parts) != expected:
            raise CodecError(f"aggregate has {len(parts)} parts, expected {expected}")
        parms_id = node.context.first_parms_id()
        slots = np.empty(expected * SLOTS, dtype=np.uint64)
        pt = sealapi.Plaintext()
        min_budget = None
        for p, blob in enumerate(parts):
            ct = self._load_aggregate_part(node, blob, p)
            if list(ct.parms_id()) != list(parms_id) or ct.size() != 2:
                raise CodecError(f"aggregate part #{p} belongs to other encryption parameters")
            budget = node.decryptor.invariant_noise_budget(ct)
            if budget <= 0:
                # The platform adds at most max_hospitals uploads, which the parameters leave budget
                # for: a ciphertext under another key (or forged) is the only way to get here.
                raise PoisonedAggregateError(
                    f"aggregate part #{p} does not decrypt under the study key (no noise budget left): at least one "
                    f"upload in it was encrypted under another key or forged (at most max_hospitals="
                    f"{enc['max_hospitals']} uploads are ever added, so this is not an overflow)")
            min_budget = budget if min_budget is None else min(min_budget, budget)
            node.decryptor.decrypt(ct, pt)
            slots[p * SLOTS:(p + 1) * SLOTS] = np.fromiter(node.encoder.decode_uint64(pt), dtype=np.uint64, count=SLOTS)
        assert min_budget is not None
        return slots, int(min_budget)

    def decrypt_aggregate(self, secret: bytes, enc: dict, parts: list[bytes], n_params: int,
                          *, return_noise_budget: bool = False) -> AggregateResult:
        enc = self.validate_config(enc)
        B, k = layout(enc)
        expected = self.n_parts(enc, n_params)
        if len(parts) != expected:
            raise CodecError(f"aggregate has {len(parts)} parts, expected {expected} for {n_params} parameters")
        slots, min_budget = self.decrypt_slots(secret, enc, parts, expected)
        cap = enc["weight_cap_samples"]
        W, n_contrib = int(slots[0]), int(slots[1])
        if not (1 <= n_contrib <= enc["max_hospitals"]) or not (n_contrib <= W <= n_contrib * cap):
            raise PoisonedAggregateError(f"aggregate header is inconsistent (count {n_contrib}, weight {W}): more than "
                             f"max_hospitals={enc['max_hospitals']} uploads were added, or parts of different uploads were mixed")
        n_slots_data = -(-n_params // k)
        data = slots[HEADER_SLOTS:HEADER_SLOTS + n_slots_data]
        mask = np.uint64((1 << B) - 1)
        digits = np.empty((n_slots_data, k), dtype=np.uint64)
        for d in range(k):
            digits[:, d] = (data >> np.uint64(B * d)) & mask
        sums = digits.reshape(-1)[:n_params].astype(np.float64)
        c = enc["update_clip"]
        step = 2.0 * c / ((1 << enc["quant_bits"]) - 1)
        mean = (sums * step - n_contrib * c) * (cap / W)
        res = AggregateResult(mean_update=mean, total_weight=float(W), n_contributors=n_contrib)
        if return_noise_budget:
            return res, min_budget  # type: ignore[return-value]
        return res

    def noise_budget(self, secret: bytes, enc: dict, parts: list[bytes]) -> int:
        """Smallest invariant noise budget (bits) over the parts of one upload, under the study key.
        Decodes no value: an honest fresh upload has tens of bits left, a ciphertext under another key
        has none (0). Key holders run it on each upload of a poisoned round to name the culprit."""
        self.validate_config(enc)
        node = self._node(secret)
        parms_id = list(node.context.first_parms_id())
        budgets = []
        for p, blob in enumerate(parts):
            ct = self._load_aggregate_part(node, blob, p)
            if list(ct.parms_id()) != parms_id or ct.size() != 2:
                raise CodecError(f"part #{p} belongs to other encryption parameters")
            budgets.append(int(node.decryptor.invariant_noise_budget(ct)))
        if not budgets:
            raise CodecError("an upload has no parts")
        return min(budgets)

    def _load_aggregate_part(self, node: BfvNodeContext, blob: bytes, p: int) -> Any:
        ct = sealapi.Ciphertext()
        try:
            seal_io.parse_header(blob)
            seal_io.load_into(ct, blob, node.context)
        except Exception as exc:
            raise CodecError(f"aggregate part #{p} is not a ciphertext of this study ({exc})") from exc
        return ct

    # ---------------------------------------------------------------- platform side
    def load_params(self, public: bytes) -> BfvPlatformContext:
        if not isinstance(public, (bytes, bytearray, memoryview)):
            raise CodecError(f"public params must be bytes, got {type(public).__name__}")
        public = bytes(public)
        key = sha256(public).digest()
        with self._lock:
            hit = self._platform_cache.get(key)
        if hit is not None:  # the same bytes passed every check below before (building a SEAL context is costly)
            return hit
        ctx = self._load_params_uncached(public)
        with self._lock:
            if len(self._platform_cache) > 16:
                self._platform_cache.clear()
            self._platform_cache[key] = ctx
        return ctx

    def _load_params_uncached(self, public: bytes) -> BfvPlatformContext:
        try:
            seal_io.parse_header(public)
        except ValueError as exc:
            raise CodecError(f"not a {self.name} parameters blob: {exc}; publish codec.public_params(secret)") from exc
        if len(public) > PARAMS_MAX_BYTES:
            raise CodecError(f"refused: a parameters-only blob is under {PARAMS_MAX_BYTES} bytes, this one has {len(public)} "
                             "bytes, so it holds key material or other data; publish codec.public_params(secret), never "
                             "the secret")
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
        try:
            seal_io.load_into(parms, public)
        except Exception as exc:
            raise CodecError(f"blob does not load as SEAL encryption parameters ({exc}); publish "
                             "codec.public_params(secret)") from exc
        check_parms(parms, self.name)
        ctx = seal_context(parms)
        return BfvPlatformContext(ctx, sealapi.Evaluator(ctx), list(ctx.first_parms_id()), public_params_sha256(public))

    def max_part_bytes(self) -> int:
        return seal_io.SEAL_HEADER_SIZE + CT_META.size + 64 + 2 * POLY_DEGREE * len(COEFF_MODULUS) * 8 + 4096

    def inspect_part(self, ctx: BfvPlatformContext, blob: bytes) -> None:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise CodecError(f"a ciphertext part must be bytes, got {type(blob).__name__}")
        if len(blob) > self.max_part_bytes():
            raise CodecError(f"ciphertext part of {len(blob)} bytes exceeds the {self.max_part_bytes()} a {NAME} "
                             "ciphertext can take")
        try:
            _, _, compr, _ = seal_io.parse_header(blob)
        except ValueError as exc:
            raise CodecError(f"not a SEAL ciphertext: {exc}; send the parts returned by encrypt_update") from exc
        pid0, pid1, pid2, pid3, is_ntt, size, degree, n_mod, _scale, _corr = ct_meta(blob, compr)
        pid = [pid0, pid1, pid2, pid3]
        if pid == [0, 0, 0, 0]:
            raise CodecError("this part is a plaintext, not a ciphertext: the platform only accepts encrypted updates")
        if pid != ctx.parms_id:
            raise CodecError(f"ciphertext belongs to other encryption parameters (parms_id {pid[0]:016x}..., expected "
                             f"{ctx.parms_id[0]:016x}...): re-encrypt with this study's context (params sha256 "
                             f"{ctx.public_sha256[:16]}...)")
        if is_ntt or size != 2 or degree != POLY_DEGREE or n_mod != len(COEFF_MODULUS):
            raise CodecError(f"malformed ciphertext metadata (ntt={is_ntt}, size={size}, degree={degree}, moduli={n_mod}); "
                             f"expected a fresh {NAME} ciphertext of size 2")

    def accumulate(self, ctx: BfvPlatformContext, acc: Any, upload: list[bytes], index: int) -> Any:
        """Deserialise one upload fully (all parts, so a bad part leaves acc untouched) and add it to acc
        (a list of SEAL ciphertexts)."""
        parts = upload_parts(upload, index, None if acc is None else len(acc))
        cts = []
        for j, blob in enumerate(parts):
            try:
                # inspect_part already ran on the request path; here SEAL's full load validates
                # the data (coefficients < q) and we re-check what the load does not.
                if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) > self.max_part_bytes():
                    raise CodecError("not a ciphertext part (wrong type or too large)")
                try:
                    seal_io.parse_header(blob)
                except ValueError as exc:
                    raise CodecError(f"not a SEAL ciphertext: {exc}") from exc
                ct = sealapi.Ciphertext()
                seal_io.load_into(ct, bytes(blob), ctx.context)
                if list(ct.parms_id()) != ctx.parms_id:
                    raise CodecError("ciphertext belongs to other encryption parameters; re-encrypt with this study's context")
                if ct.size() != 2 or ct.is_ntt_form():
                    raise CodecError(f"ciphertext has size {ct.size()} / ntt={ct.is_ntt_form()}, expected a fresh "
                                     "size-2 BFV ciphertext")
            except CodecError as exc:
                raise CodecError(f"upload #{index} part #{j}: {exc}") from exc
            except Exception as exc:  # SEAL's own validation (coefficients out of range, bad sizes...)
                raise CodecError(f"upload #{index} part #{j}: SEAL rejects the ciphertext ({exc})") from exc
            cts.append(ct)
        if acc is None:
            return cts
        for a, ct in zip(acc, cts):
            ctx.evaluator.add_inplace(a, ct)
        return acc

    def finish(self, ctx: BfvPlatformContext, acc: Any) -> list[bytes]:
        """Serialise the accumulator: full (unseeded) ciphertexts, zstd-compressed by SEAL."""
        if acc is None:
            raise CodecError("no uploads to aggregate")
        return [seal_io.save_bytes(a) for a in acc]
