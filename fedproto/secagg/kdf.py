"""Key agreement and seed derivation with domain separation.

Every seed of the protocol is ``HKDF-SHA256`` (RFC 5869) of some input key material, with a
fixed salt naming the protocol version and an ``info`` string that encodes, unambiguously
(type tag + length prefix per field), what the seed is for: its label, the study, the round,
the hospitals and the public keys involved. Two seeds with different purposes, studies,
rounds or pairs are therefore independent even if the key material repeats.

Pairwise seeds come from X25519 between the two hospitals' *per-round* mask keys (never the
long-term node keys: a dropped hospital's mask key is reconstructed by the platform, which must
not learn anything that outlives the round).
"""

from __future__ import annotations

import hashlib
import hmac

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import RuntimeError as NaclRuntimeError

from .errors import SecAggError

PROTOCOL = "fedproto-secagg-v1"
SALT = PROTOCOL.encode()
SEED_BYTES = 32
KEY_BYTES = 32

Field = str | int | bytes


def encode_fields(*fields: Field) -> bytes:
    """Injective encoding of a tuple of str/int/bytes: tag byte, 4-byte length, body per field."""
    out = bytearray()
    for f in fields:
        if isinstance(f, bool):
            raise SecAggError("booleans are not valid key-derivation fields")
        if isinstance(f, bytes):
            tag, body = b"b", f
        elif isinstance(f, str):
            tag, body = b"s", f.encode("utf-8")
        elif isinstance(f, int):
            tag, body = b"i", str(f).encode("ascii")
        else:
            raise SecAggError(f"key-derivation field of type {type(f).__name__} is not str, int or bytes")
        out += tag + len(body).to_bytes(4, "big") + body
    return bytes(out)


def hkdf_sha256(ikm: bytes, info: bytes, length: int = SEED_BYTES, salt: bytes = SALT) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand with ``info``."""
    if not 0 < length <= 255 * 32:
        raise SecAggError(f"HKDF output length {length} out of range 1..{255 * 32}")
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def derive_seed(ikm: bytes, label: str, *context: Field) -> bytes:
    return hkdf_sha256(ikm, encode_fields(PROTOCOL, label, *context))


def check_key(key: bytes, what: str) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise SecAggError(f"{what} must be {KEY_BYTES} raw bytes (X25519), got "
                          f"{len(key) if isinstance(key, bytes) else type(key).__name__}")
    return key


def x25519(private_key: bytes, peer_public_key: bytes) -> bytes:
    """Raw X25519 shared secret; refuses low-order peer keys (all-zero result)."""
    check_key(private_key, "mask private key")
    check_key(peer_public_key, "peer mask public key")
    try:
        shared = crypto_scalarmult(private_key, peer_public_key)
    except NaclRuntimeError as exc:  # libsodium refuses some low-order points itself
        raise SecAggError("peer mask public key is a low-order point: the peer must send a fresh key") from exc
    if not any(shared):
        raise SecAggError("peer mask public key is a low-order point: the peer must send a fresh key")
    return shared


def pairwise_seed(my_private: bytes, my_public: bytes, peer_public: bytes, study_id: str, round_index: int,
                  me: int, peer: int) -> bytes:
    """The seed both hospitals of a pair derive alike (ordered by hospital id, keys bound in)."""
    if me == peer:
        raise SecAggError("a hospital has no pairwise mask with itself")
    shared = x25519(my_private, peer_public)
    (lo, lo_pk), (hi, hi_pk) = sorted(((me, my_public), (peer, peer_public)))
    return derive_seed(shared, "pairwise-mask", study_id, round_index, lo, hi, lo_pk, hi_pk)


def self_mask_seed(b: bytes, study_id: str, round_index: int, hospital: int) -> bytes:
    return derive_seed(b, "self-mask", study_id, round_index, hospital)


def self_mask_commitment(b: bytes, study_id: str, round_index: int, hospital: int) -> str:
    """Hex SHA-256 commitment to the self-mask secret ``b`` (published before masking; the
    reconstructed ``b`` is checked against it, so a wrong share cannot go unnoticed)."""
    return hashlib.sha256(encode_fields(PROTOCOL, "self-mask-commitment", study_id, round_index, hospital, b)).hexdigest()
