"""Protocol messages of one secure-aggregation round, as plain dataclasses <-> JSON-able dicts.

Flow (node = hospital i, platform = relay and aggregator; ``Box`` = PyNaCl authenticated
encryption between the two hospitals' long-term X25519 node keys, opaque to the platform):

  1. platform -> all     RoundSetup      participants, Shamir threshold, quorum, collusion bound T,
                                         plaintext modulus, vector length (slots)
  2. node -> platform    KeyAdvert       fresh per-round mask public key, commitment to self-mask seed b_i
  3. platform -> all     KeyDirectory    every advert (U0); the round is aborted if |U0| < quorum
  4. node -> platform    ShareBundle     per peer j in U0: Box_{i->j}(SharePayload), Shamir shares of
                                         i's mask private key and of b_i, with i's mask key bound in
  5. platform -> node j  ShareInbox      U1 (who sent bundles) and the boxes addressed to j
     node j uploads its masked, encrypted update (the existing upload path; not a message here)
  6. platform -> U2      UnmaskRequest   U2 = who uploaded; U1 \\ U2 = who dropped
  7. node -> platform    UnmaskResponse  shares of the mask keys of the dropped, shares of b of the
                                         survivors; a node answers one U2 per round, never both kinds
                                         of share for the same hospital
  8. platform            RoundTranscript what the ledger records (U0, U1, U2, dropped, parameters)

Every ``from_dict`` takes untrusted network data and raises SecAggError naming the bad field.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import SecAggError
from .kdf import KEY_BYTES, PROTOCOL
from .prg import check_modulus
from .shamir import share_from_hex, share_to_hex

MAX_PARTICIPANTS = 10_000
MAX_VECTOR_LEN = 1 << 32


def _int(d: Mapping[str, Any], key: str, lo: int = 0, hi: int | None = None) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        raise SecAggError(f"{key} must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "") + f", got {v!r}")
    return v


def _str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v or len(v) > 200:
        raise SecAggError(f"{key} must be a non-empty string of at most 200 characters")
    return v


def _ids(v: Any, key: str) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise SecAggError(f"{key} must be a list of hospital ids")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise SecAggError(f"{key} holds {x!r}: hospital ids are positive integers")
    if len(set(v)) != len(v):
        raise SecAggError(f"{key} lists a hospital twice")
    return tuple(sorted(v))


def _b64(v: Any, key: str, size: int | None = None) -> bytes:
    if not isinstance(v, str):
        raise SecAggError(f"{key} must be a base64 string")
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise SecAggError(f"{key} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise SecAggError(f"{key} must decode to {size} bytes, got {len(raw)}")
    return raw


def _enc(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _keyed(v: Any, key: str) -> dict[int, Any]:
    if not isinstance(v, dict):
        raise SecAggError(f"{key} must be an object keyed by hospital id")
    out: dict[int, Any] = {}
    for k, x in v.items():
        if not isinstance(k, str) or not k.isdigit() or int(k) < 1 or str(int(k)) != k:
            raise SecAggError(f"{key} has key {k!r}: keys are hospital ids written as decimal strings")
        out[int(k)] = x
    return out


def _head(d: Any, kind: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise SecAggError(f"a {kind} message must be a JSON object")
    if d.get("kind") != kind:
        raise SecAggError(f"expected a {kind} message, got kind {d.get('kind')!r}")
    if d.get("protocol") != PROTOCOL:
        raise SecAggError(f"protocol {d.get('protocol')!r} is not supported; this node speaks {PROTOCOL}")
    return d


class _Message:
    KIND: ClassVar[str]
    study_id: str  # declared by every message dataclass (this base is not a dataclass)
    round_index: int

    def _base(self) -> dict[str, Any]:
        return {"kind": self.KIND, "protocol": PROTOCOL, "study_id": self.study_id, "round": self.round_index}


def min_threshold(n_participants: int, collusion: int) -> int:
    """Smallest Shamir threshold that keeps every honest hospital's update hidden when the platform
    colludes with ``collusion`` hospitals, even if it lies about who dropped: it must exceed T (the
    colluders' own shares) and (K + T) / 2 (so two disjoint groups of honest survivors, each told a
    different story, cannot both complete a reconstruction; every node answers one story per round)."""
    return (n_participants + collusion) // 2 + 1


@dataclass(frozen=True)
class RoundSetup(_Message):
    KIND: ClassVar[str] = "secagg.setup"
    study_id: str
    round_index: int
    participants: tuple[int, ...]
    threshold: int
    quorum: int
    collusion: int
    modulus: int
    vector_len: int

    def __post_init__(self) -> None:
        k = len(self.participants)
        object.__setattr__(self, "participants", _ids(list(self.participants), "participants"))
        if not 2 <= k <= MAX_PARTICIPANTS:
            raise SecAggError(f"secure aggregation needs 2..{MAX_PARTICIPANTS} participants, got {k}")
        t = self.collusion
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < k:
            raise SecAggError(f"collusion bound T must be an integer in 0..{k - 1}, got {t!r}")
        lo = min_threshold(k, t)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or not lo <= self.threshold <= k:
            raise SecAggError(f"threshold {self.threshold!r} must be in {lo}..{k}: with {k} participants and up to {t} "
                              f"colluding with the platform it must exceed (K + T) / 2; raise it or lower T")
        if isinstance(self.quorum, bool) or not isinstance(self.quorum, int) or not self.threshold <= self.quorum <= k:
            raise SecAggError(f"quorum {self.quorum!r} must be in {self.threshold}..{k}: the survivors must hold at least "
                              f"threshold shares to unmask")
        check_modulus(self.modulus)
        n = self.vector_len
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_VECTOR_LEN:
            raise SecAggError(f"vector_len must be an integer in 1..2^32, got {self.vector_len!r}")
        if not isinstance(self.study_id, str) or not self.study_id or len(self.study_id) > 200:
            raise SecAggError("study_id must be a non-empty string of at most 200 characters")
        if isinstance(self.round_index, bool) or not isinstance(self.round_index, int) or self.round_index < 0:
            raise SecAggError(f"round must be a non-negative integer, got {self.round_index!r}")

    @property
    def honest_noise_shares(self) -> int:
        """Noise shares guaranteed in an aggregate: survivors (>= quorum) minus colluders."""
        return self.quorum - self.collusion

    def to_dict(self) -> dict[str, Any]:
        return {**self._base(), "participants": list(self.participants), "threshold": self.threshold,
                "quorum": self.quorum, "collusion": self.collusion, "modulus": str(self.modulus),
                "vector_len": self.vector_len}

    @classmethod
    def from_dict(cls, d: Any) -> RoundSetup:
        d = _head(d, cls.KIND)
        mod = d.get("modulus")
        if not isinstance(mod, str) or not mod.isdigit() or len(mod) > 20:
            raise SecAggError("modulus must be a decimal string (JSON numbers lose precision beyond 2^53)")
        return cls(_str(d, "study_id"), _int(d, "round"), _ids(d.get("participants"), "participants"),
                   _int(d, "threshold", 1), _int(d, "quorum", 1), _int(d, "collusion"), int(mod),
                   _int(d, "vector_len", 1))


@dataclass(frozen=True)
class KeyAdvert(_Message):
    KIND: ClassVar[str] = "secagg.advert"
    study_id: str
    round_index: int
    hospital: int
    mask_public_key: bytes
    self_mask_commitment: str

    def to_dict(self) -> dict[str, Any]:
        return {**self._base(), "hospital": self.hospital, "mask_public_key": _enc(self.mask_public_key),
                "self_mask_commitment": self.self_mask_commitment}

    @classmethod
    def from_dict(cls, d: Any) -> KeyAdvert:
        d = _head(d, cls.KIND)
        c = d.get("self_mask_commitment")
        if not isinstance(c, str) or len(c) != 64 or any(ch not in "0123456789abcdef" for ch in c):
            raise SecAggError("self_mask_commitment must be 64 lowercase hex characters (SHA-256)")
        return cls(_str(d, "study_id"), _int(d, "round"), _int(d, "hospital", 1),
                   _b64(d.get("mask_public_key"), "mask_public_key", KEY_BYTES), c)


@dataclass(frozen=True)
class KeyDirectory(_Message):
    KIND: ClassVar[str] = "secagg.directory"
    study_id: str
    round_index: int
    adverts: tuple[KeyAdvert, ...]

    def by_hospital(self) -> dict[int, KeyAdvert]:
        out = {a.hospital: a for a in self.adverts}
        if len(out) != len(self.adverts):
            raise SecAggError("key directory lists a hospital twice")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**self._base(), "adverts": [a.to_dict() for a in sorted(self.adverts, key=lambda a: a.hospital)]}

    @classmethod
    def from_dict(cls, d: Any) -> KeyDirectory:
        d = _head(d, cls.KIND)
        ads = d.get("adverts")
        if not isinstance(ads, list) or len(ads) > MAX_PARTICIPANTS:
            raise SecAggError("adverts must be a list of key adverts")
        out = cls(_str(d, "study_id"), _int(d, "round"), tuple(KeyAdvert.from_dict(a) for a in ads))
        out.by_hospital()
        return out


@dataclass(frozen=True)
class SharePayload:
    """What hospital i seals for hospital j (inside a Box; never seen by the platform)."""

    study_id: str
    round_index: int
    sender: int
    recipient: int
    mask_public_key: bytes
    self_mask_commitment: str
    mask_key_share: int
    self_mask_share: int

    def to_bytes(self) -> bytes:
        return json.dumps({"study_id": self.study_id, "round": self.round_index, "sender": self.sender,
                           "recipient": self.recipient, "mask_public_key": _enc(self.mask_public_key),
                           "self_mask_commitment": self.self_mask_commitment,
                           "mask_key_share": share_to_hex(self.mask_key_share),
                           "self_mask_share": share_to_hex(self.self_mask_share)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SharePayload:
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise SecAggError("a sealed share does not hold JSON: the sender must re-send its shares") from None
        if not isinstance(d, dict):
            raise SecAggError("a sealed share must hold a JSON object")
        return cls(_str(d, "study_id"), _int(d, "round"), _int(d, "sender", 1), _int(d, "recipient", 1),
                   _b64(d.get("mask_public_key"), "mask_public_key", KEY_BYTES), str(d.get("self_mask_commitment")),
                   share_from_hex(d.get("mask_key_share"), "mask_key_share"),
                   share_from_hex(d.get("self_mask_share"), "self_mask_share"))


def _boxes_to_dict(boxes: Mapping[int, bytes]) -> dict[str, str]:
    return {str(k): _enc(v) for k, v in sorted(boxes.items())}


def _boxes_from(v: Any, key: str) -> dict[int, bytes]:
    return {k: _b64(x, f"{key}[{k}]") for k, x in _keyed(v, key).items()}


@dataclass(frozen=True)
class ShareBundle(_Message):
    KIND: ClassVar[str] = "secagg.shares"
    study_id: str
    round_index: int
    sender: int
    boxes: dict[int, bytes] = field(default_factory=dict)  # recipient -> Box ciphertext

    def to_dict(self) -> dict[str, Any]:
        return {**self._base(), "sender": self.sender, "boxes": _boxes_to_dict(self.boxes)}

    @classmethod
    def from_dict(cls, d: Any) -> ShareBundle:
        d = _head(d, cls.KIND)
        return cls(_str(d, "study_id"), _int(d, "round"), _int(d, "sender", 1), _boxes_from(d.get("boxes"), "boxes"))


@dataclass(frozen=True)
class ShareInbox(_Message):
    KIND: ClassVar[str] = "secagg.inbox"
    study_id: str
    round_index: int
    recipient: int
    senders: tuple[int, ...]  # U1: every hospital whose bundle reached the platform (recipient included)
    boxes: dict[int, bytes] = field(default_factory=dict)  # sender -> Box ciphertext for the recipient

    def to_dict(self) -> dict[str, Any]:
        return {**self._base(), "recipient": self.recipient, "senders": list(self.senders),
                "boxes": _boxes_to_dict(self.boxes)}

    @classmethod
    def from_dict(cls, d: Any) -> ShareInbox:
        d = _head(d, cls.KIND)
        return cls(_str(d, "study_id"), _int(d, "round"), _int(d, "recipient", 1), _ids(d.get("senders"), "senders"),
                   _boxes_from(d.get("boxes"), "boxes"))


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    KIND: ClassVar[str] = "secagg.unmask_request"
    study_id: str
    round_index: int
    survivors: tuple[int, ...]  # U2: whose masked upload is in the aggregate

    def to_dict(self) -> dict[str, Any]:
        return {**self._base(), "survivors": list(self.survivors)}

    @classmethod
    def from_dict(cls, d: Any) -> UnmaskRequest:
        d = _head(d, cls.KIND)
        return cls(_str(d, "study_id"), _int(d, "round"), _ids(d.get("survivors"), "survivors"))


def _shares_to_dict(shares: Mapping[int, int]) -> dict[str, str]:
    return {str(k): share_to_hex(v) for k, v in sorted(shares.items())}


def _shares_from(v: Any, key: str) -> dict[int, int]:
    return {k: share_from_hex(x, f"{key}[{k}]") for k, x in _keyed(v, key).items()}


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    KIND: ClassVar[str] = "secagg.unmask_response"
    study_id: str
    round_index: int
    sender: int
    mask_key_shares: dict[int, int] = field(default_factory=dict)  # dropped hospital -> share of its mask key
    self_mask_shares: dict[int, int] = field(default_factory=dict)  # surviving hospital -> share of its b

    def to_dict(self) -> dict[str, Any]:
        return {**self._base(), "sender": self.sender, "mask_key_shares": _shares_to_dict(self.mask_key_shares),
                "self_mask_shares": _shares_to_dict(self.self_mask_shares)}

    @classmethod
    def from_dict(cls, d: Any) -> UnmaskResponse:
        d = _head(d, cls.KIND)
        return cls(_str(d, "study_id"), _int(d, "round"), _int(d, "sender", 1),
                   _shares_from(d.get("mask_key_shares"), "mask_key_shares"),
                   _shares_from(d.get("self_mask_shares"), "self_mask_shares"))


@dataclass(frozen=True)
class RoundTranscript(_Message):
    """What the platform's ledger records for the round (no secret, no share)."""

    KIND: ClassVar[str] = "secagg.transcript"
    study_id: str
    round_index: int
    advertised: tuple[int, ...]
    shared: tuple[int, ...]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    threshold: int
    quorum: int
    collusion: int

    def to_dict(self) -> dict[str, Any]:
        return {**self._base(), "advertised": list(self.advertised), "shared": list(self.shared),
                "survivors": list(self.survivors), "dropped": list(self.dropped), "threshold": self.threshold,
                "quorum": self.quorum, "collusion": self.collusion}


def check_context(msg: Any, setup: RoundSetup) -> None:
    """The message belongs to this study and round."""
    if msg.study_id != setup.study_id or msg.round_index != setup.round_index:
        raise SecAggError(f"{msg.KIND if hasattr(msg, 'KIND') else 'message'} is for study {msg.study_id!r} round "
                          f"{msg.round_index}, this round is study {setup.study_id!r} round {setup.round_index}")


def subset(ids: Iterable[int], of: Iterable[int], what: str, whole: str) -> tuple[int, ...]:
    ids, pool = tuple(sorted(ids)), set(of)
    stray = [i for i in ids if i not in pool]
    if stray:
        raise SecAggError(f"{what} lists hospital(s) {stray} that are not in {whole}")
    return ids
