"""ckks-flare: the NVIDIA FLARE default, kept as the benchmark baseline.

CKKS, N=8192, coeff_mod_bit_sizes [60, 40, 40], scale 2^40, TenSEAL's high-level
API, one ckks_vector per chunk of at most N/2 values (per layer in FLARE; here the
flat vector is chunked, or split by enc["layer_sizes"] when given). Weighting in
float on the node. The last part holds [weight numerator, 1] for total weight and count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tenseal as ts

from ..errors import CodecError, SpecError
from .base import AggregateResult, Codec, as_update, check_number, pack_secret, unpack_secret, upload_parts

NAME = "ckks-flare"
POLY_DEGREE = 8192
COEFF_BITS = [60, 40, 40]
SCALE_BITS = 40
CHUNK = POLY_DEGREE // 2
DEFAULTS = {"codec": NAME, "max_hospitals": 200, "update_clip": 1.0, "weight_cap_samples": 1000}


class CkksFlareCodec(Codec):
    name = NAME

    def __init__(self) -> None:
        self._cache: dict[bytes, Any] = {}

    def validate_config(self, enc: dict) -> dict:
        if not isinstance(enc, dict):
            raise SpecError("encryption must be an object")
        out = {**DEFAULTS, **{k: v for k, v in enc.items() if k != "quant_bits"}}
        out["codec"] = NAME if enc.get("codec", NAME) in (NAME, "bfv-packed-v1") else enc["codec"]
        if out["codec"] != NAME:
            raise SpecError(f"encryption.codec is {enc['codec']!r}, this codec is {NAME!r}")
        check_number(out, "max_hospitals", lo=1, hi=10000, integer=True)
        check_number(out, "weight_cap_samples", lo=1, hi=10**9, integer=True)
        check_number(out, "update_clip", lo=1e-9, hi=1e6, integer=False)
        if "layer_sizes" in out:
            ls = out["layer_sizes"]
            if not isinstance(ls, list) or not all(isinstance(x, int) and x > 0 for x in ls):
                raise SpecError("encryption.layer_sizes must be a list of positive integers")
        return out

    def describe(self, enc: dict) -> dict:
        enc = self.validate_config(enc)
        return {"codec": NAME, "scheme": "CKKS (TenSEAL)", "poly_modulus_degree": POLY_DEGREE,
                "plain_modulus": None, "coeff_mod_bit_sizes": COEFF_BITS, "security_level_bits": 128,
                "scale_bits": SCALE_BITS, "values_per_slot": 1, "quant_bits": None, "headroom": None,
                "upload_bytes_per_param": 57.6, "aggregate_bytes_per_param": 57.6}

    def _chunks(self, enc: dict, n_params: int) -> list[tuple[int, int]]:
        sizes = enc.get("layer_sizes") or [n_params]
        if sum(sizes) != n_params:
            raise SpecError(f"layer_sizes sum to {sum(sizes)}, the update has {n_params} values")
        out, off = [], 0
        for s in sizes:
            for a in range(0, s, CHUNK):
                out.append((off + a, off + min(s, a + CHUNK)))
            off += s
        return out

    def n_parts(self, enc: dict, n_params: int) -> int:
        return len(self._chunks(self.validate_config(enc), n_params)) + 1

    def generate_secret(self, enc: dict) -> bytes:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, POLY_DEGREE, coeff_mod_bit_sizes=COEFF_BITS)
        ctx.global_scale = 2 ** SCALE_BITS
        return pack_secret(NAME, [ctx.serialize(save_secret_key=True)])

    def _ctx(self, secret: bytes):
        if secret not in self._cache:
            (blob,) = unpack_secret(NAME, secret)
            self._cache.clear()
            self._cache[secret] = ts.context_from(blob)
        return self._cache[secret]

    def public_params(self, secret: bytes) -> bytes:
        return self._ctx(secret).serialize(save_public_key=False, save_secret_key=False,
                                           save_galois_keys=False, save_relin_keys=False)

    def encrypt_update(self, secret, enc, update, n_samples, rng) -> list[bytes]:
        enc = self.validate_config(enc)
        upd = as_update(update)
        ctx = self._ctx(secret)
        cap = enc["weight_cap_samples"]
        wnum = min(int(n_samples), cap)
        x = np.clip(upd * (wnum / cap), -enc["update_clip"], enc["update_clip"])
        parts = [ts.ckks_vector(ctx, x[a:b].tolist()).serialize() for a, b in self._chunks(enc, len(x))]
        parts.append(ts.ckks_vector(ctx, [float(wnum), 1.0]).serialize())
        return parts

    def decrypt_aggregate(self, secret, enc, parts, n_params) -> AggregateResult:
        enc = self.validate_config(enc)
        ctx = self._ctx(secret)
        chunks = self._chunks(enc, n_params)
        if len(parts) != len(chunks) + 1:
            raise CodecError(f"aggregate has {len(parts)} parts, expected {len(chunks) + 1}")
        out = np.empty(n_params)
        for (a, b), blob in zip(chunks, parts):
            out[a:b] = ts.ckks_vector_from(ctx, blob).decrypt()[: b - a]
        W, n = ts.ckks_vector_from(ctx, parts[-1]).decrypt()[:2]
        n = int(round(n))
        return AggregateResult(mean_update=out / (W / enc["weight_cap_samples"]), total_weight=float(W), n_contributors=n)

    def load_params(self, public: bytes):
        try:
            ctx = ts.context_from(bytes(public))
        except Exception as exc:
            raise CodecError(f"not a TenSEAL context ({exc})") from exc
        if ctx.has_secret_key() or ctx.has_public_key():
            raise CodecError("refused: the context holds key material; publish codec.public_params(secret)")
        return ctx

    def max_part_bytes(self) -> int:
        # One CKKS vector: a size-2 ciphertext of N coefficients per modulus, 8 bytes each (the
        # serialisation compresses it), plus TenSEAL's framing.
        return 2 * POLY_DEGREE * len(COEFF_BITS) * 8 + 64 * 1024

    def inspect_part(self, ctx, blob: bytes) -> None:
        if len(blob) > self.max_part_bytes():
            raise CodecError(f"ciphertext part of {len(blob)} bytes exceeds the {self.max_part_bytes()} a {NAME} "
                             "vector can take")
        try:
            ts.ckks_vector_from(ctx, bytes(blob))
        except Exception as exc:
            raise CodecError(f"not a CKKS vector of this context ({exc})") from exc

    def accumulate(self, ctx, acc, upload, index: int):
        parts = upload_parts(upload, index, None if acc is None else len(acc))
        try:
            vecs = [ts.ckks_vector_from(ctx, bytes(b)) for b in parts]
        except Exception as exc:
            raise CodecError(f"upload #{index}: not a CKKS vector of this context ({exc})") from exc
        if acc is None:
            return vecs
        for a, v in zip(acc, vecs):
            a += v
        return acc

    def finish(self, ctx, acc) -> list[bytes]:
        if acc is None:
            raise CodecError("no uploads to aggregate")
        return [a.serialize() for a in acc]
