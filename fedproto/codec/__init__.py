"""Encoding of a model update into ciphertexts, behind one interface.

    codec = get_codec(enc.get("codec", DEFAULT_CODEC))
    enc = codec.validate_config(enc)

Node side: generate_secret / public_params / encrypt_update / decrypt_aggregate.
Platform side (parameters only, no key of any kind): load_params / n_parts /
inspect_part / aggregate. See docs/PROTOCOL.md and docs/codec.md.
"""

from __future__ import annotations

from ..errors import CodecError, SpecError
from .base import AggregateResult, Codec, public_params_sha256
from .bfv_packed import BfvPackedCodec
from .bfv_raw import BfvPackedRawCodec
from .ckks_flare import CkksFlareCodec

# Fast platform aggregation (numpy adds raw ciphertexts) at 6.7 bytes/parameter; "bfv-packed-v1"
# halves uploads (3.8 B/param, seeded) at many times the platform's aggregation cost. Measurements:
# docs/codec.md.
DEFAULT_CODEC = "bfv-packed-raw-v1"

CODECS: dict[str, Codec] = {
    BfvPackedCodec.name: BfvPackedCodec(),
    BfvPackedRawCodec.name: BfvPackedRawCodec(),
    CkksFlareCodec.name: CkksFlareCodec(),
}


def get_codec(name: str | None = None) -> Codec:
    name = DEFAULT_CODEC if name is None else name
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise SpecError(f"unknown encryption codec {name!r}: use one of {sorted(CODECS)}") from None


__all__ = ["AggregateResult", "Codec", "CODECS", "DEFAULT_CODEC", "get_codec", "public_params_sha256",
           "CodecError", "SpecError"]
