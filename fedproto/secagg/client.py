"""Node side of a round (one hospital): keys, sealed shares, masking, and guarded unmasking.

Per round the node makes a fresh X25519 mask key pair and a fresh 32-byte self-mask secret b;
its long-term node key (hospital_node/credentials.py) only seals the Shamir shares to each peer
(PyNaCl ``Box``: authenticated, so a share and the sender's mask public key inside it cannot be
forged by the platform). A node masks only with hospitals whose sealed share reached it and whose
sealed mask key equals the advertised one; it answers one unmask request per round and never
reveals both the mask-key share and the self-mask share of one hospital.

The client holds secrets: ``export_state`` is for the node's private, 0600 state file only.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from . import shamir
from .errors import SecAggError
from .kdf import check_key, pairwise_seed, self_mask_commitment, self_mask_seed
from .masking import mask_vector
from .messages import (
    KeyAdvert,
    KeyDirectory,
    RoundSetup,
    ShareBundle,
    ShareInbox,
    SharePayload,
    UnmaskRequest,
    UnmaskResponse,
    check_context,
    subset,
)


class SecAggClient:
    def __init__(self, setup: RoundSetup, hospital: int, static_private_key: bytes, *,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 randbelow: Callable[[int], int] = secrets.randbelow) -> None:
        if hospital not in setup.participants:
            raise SecAggError(f"hospital {hospital} is not a participant of study {setup.study_id!r} round {setup.round_index}")
        self.setup = setup
        self.hospital = hospital
        self._static = PrivateKey(check_key(static_private_key, "node private key"))
        self._randbelow = randbelow
        self._mask_sk = PrivateKey(random_bytes(32))
        self._b = random_bytes(32)
        self._directory: dict[int, KeyAdvert] | None = None
        self._held: dict[int, tuple[int, int]] = {}  # owner -> (share of mask key, share of b) held by me
        self._u1: tuple[int, ...] | None = None
        self._pair_seeds: dict[int, bytes] = {}
        self._answered: tuple[int, ...] | None = None
        self._bundle: ShareBundle | None = None

    @property
    def mask_public_key(self) -> bytes:
        return bytes(self._mask_sk.public_key)

    def advert(self) -> KeyAdvert:
        s = self.setup
        return KeyAdvert(s.study_id, s.round_index, self.hospital, self.mask_public_key,
                         self_mask_commitment(self._b, s.study_id, s.round_index, self.hospital))

    def share(self, directory: KeyDirectory, static_public_keys: Mapping[int, bytes]) -> ShareBundle:
        """Seal Shamir shares of my mask key and of b to every hospital of the directory (U0)."""
        check_context(directory, self.setup)
        ads = directory.by_hospital()
        subset(ads, self.setup.participants, "the key directory", "the round's participants")
        if ads.get(self.hospital) != self.advert():
            raise SecAggError("the key directory does not carry this node's advert unchanged: refusing the round")
        if len(ads) < self.setup.quorum:
            raise SecAggError(f"the key directory lists {len(ads)} hospitals, fewer than the quorum {self.setup.quorum}")
        if self._directory is not None and self._directory != ads:
            raise SecAggError("a different key directory was already used this round: refusing to share again")
        if self._bundle is not None:  # a repeat gets the same shares: two sharings of one secret must not exist
            return self._bundle
        u0 = sorted(ads)
        key_shares = shamir.split(bytes(self._mask_sk), u0, self.setup.threshold, self._randbelow)
        b_shares = shamir.split(self._b, u0, self.setup.threshold, self._randbelow)
        adv = self.advert()
        boxes: dict[int, bytes] = {}
        for peer in u0:
            if peer == self.hospital:
                continue
            payload = SharePayload(self.setup.study_id, self.setup.round_index, self.hospital, peer, adv.mask_public_key,
                                   adv.self_mask_commitment, key_shares[peer], b_shares[peer])
            boxes[peer] = bytes(Box(self._static, self._peer_static(static_public_keys, peer)).encrypt(payload.to_bytes()))
        self._directory = ads
        self._held[self.hospital] = (key_shares[self.hospital], b_shares[self.hospital])
        self._bundle = ShareBundle(self.setup.study_id, self.setup.round_index, self.hospital, boxes)
        return self._bundle

    @staticmethod
    def _peer_static(keys: Mapping[int, bytes], peer: int) -> PublicKey:
        if peer not in keys:
            raise SecAggError(f"no node public key for hospital {peer}: the platform must send every participant's key")
        return PublicKey(check_key(keys[peer], f"node public key of hospital {peer}"))

    def receive(self, inbox: ShareInbox, static_public_keys: Mapping[int, bytes]) -> None:
        """Open and check the shares sealed to me; afterwards ``mask`` may run."""
        check_context(inbox, self.setup)
        if self._directory is None:
            raise SecAggError("shares arrived before this node sent its own (call share first)")
        if self._u1 is not None:
            raise SecAggError("shares for this round were already received")
        if inbox.recipient != self.hospital:
            raise SecAggError(f"the inbox is addressed to hospital {inbox.recipient}, not {self.hospital}")
        u1 = subset(inbox.senders, self._directory, "the inbox's sender list", "the key directory")
        if self.hospital not in u1:
            raise SecAggError("the platform did not count this node's shares: it sits this round out")
        if len(u1) < self.setup.quorum:
            raise SecAggError(f"only {len(u1)} hospitals shared keys, fewer than the quorum {self.setup.quorum}")
        expected = set(u1) - {self.hospital}
        if set(inbox.boxes) != expected:
            raise SecAggError(f"the inbox must hold one sealed share from each of {sorted(expected)}, got {sorted(inbox.boxes)}")
        held: dict[int, tuple[int, int]] = {}
        for sender in sorted(expected):
            try:
                raw = Box(self._static, self._peer_static(static_public_keys, sender)).decrypt(inbox.boxes[sender])
            except CryptoError:
                raise SecAggError(f"the share from hospital {sender} does not open with its node key: "
                                  f"forged or corrupted") from None
            p = SharePayload.from_bytes(raw)
            adv = self._directory[sender]
            if (p.study_id, p.round_index, p.sender, p.recipient) != (self.setup.study_id, self.setup.round_index, sender,
                                                                      self.hospital):
                raise SecAggError(f"the share from hospital {sender} was sealed for another study, round or recipient")
            if p.mask_public_key != adv.mask_public_key or p.self_mask_commitment != adv.self_mask_commitment:
                raise SecAggError(f"hospital {sender}'s sealed mask key differs from the advertised one: the directory was "
                                  f"tampered with; refusing the round")
            held[sender] = (p.mask_key_share, p.self_mask_share)
        s = self.setup
        self._pair_seeds = {peer: pairwise_seed(bytes(self._mask_sk), self.mask_public_key, self._directory[peer].mask_public_key,
                                                s.study_id, s.round_index, self.hospital, peer) for peer in sorted(expected)}
        self._held.update(held)
        self._u1 = u1

    def mask(self, values: np.ndarray) -> np.ndarray:
        """My quantised (noised, packed) slot values mod t, masked; encrypt and upload the result."""
        if self._u1 is None:
            raise SecAggError("masking needs the peers' shares first (call receive)")
        s = self.setup
        return mask_vector(values, s.vector_len, self.hospital, self_mask_seed(self._b, s.study_id, s.round_index, self.hospital),
                           self._pair_seeds, s.modulus)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Shares of the dropped hospitals' mask keys and of the survivors' self-masks."""
        check_context(request, self.setup)
        if self._u1 is None:
            raise SecAggError("this node did not take part in the share exchange of this round")
        survivors = subset(request.survivors, self._u1, "the survivor list", "the hospitals that shared keys")
        if self.hospital not in survivors:
            raise SecAggError("the survivor list omits this node although it is asked to unmask: refused")
        if len(survivors) < self.setup.quorum:
            raise SecAggError(f"only {len(survivors)} survivors, fewer than the quorum {self.setup.quorum}: refusing to unmask")
        if self._answered is not None and self._answered != survivors:
            raise SecAggError(f"already answered for survivors {list(self._answered)}; a different survivor list would reveal "
                              f"both masks of some hospital: refused")
        self._answered = survivors
        dropped = [h for h in self._u1 if h not in survivors]
        return UnmaskResponse(self.setup.study_id, self.setup.round_index, self.hospital,
                              {i: self._held[i][0] for i in dropped}, {j: self._held[j][1] for j in survivors})

    def export_state(self) -> dict[str, Any]:
        """Everything needed to resume the round after a restart (secret: store it 0600, never log it)."""
        enc = base64.b64encode
        return {"setup": self.setup.to_dict(), "hospital": self.hospital,
                "mask_private_key": enc(bytes(self._mask_sk)).decode(), "b": enc(self._b).decode(),
                "directory": None if self._directory is None else
                KeyDirectory(self.setup.study_id, self.setup.round_index, tuple(self._directory.values())).to_dict(),
                "bundle": None if self._bundle is None else self._bundle.to_dict(),
                "held": {str(k): [shamir.share_to_hex(a), shamir.share_to_hex(b)] for k, (a, b) in self._held.items()},
                "u1": None if self._u1 is None else list(self._u1),
                "answered": None if self._answered is None else list(self._answered)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], static_private_key: bytes) -> SecAggClient:
        try:
            setup = RoundSetup.from_dict(state["setup"])
            secrets_ = iter([base64.b64decode(state["mask_private_key"], validate=True),
                             base64.b64decode(state["b"], validate=True)])
            c = cls(setup, int(state["hospital"]), static_private_key, random_bytes=lambda n: next(secrets_))
            if state["directory"] is not None:
                c._directory = KeyDirectory.from_dict(state["directory"]).by_hospital()
            if state["bundle"] is not None:
                c._bundle = ShareBundle.from_dict(state["bundle"])
            c._held = {int(k): (shamir.share_from_hex(a), shamir.share_from_hex(b)) for k, (a, b) in state["held"].items()}
            if state["u1"] is not None:
                c._u1 = tuple(state["u1"])
                if c._directory is None:
                    raise SecAggError("secure-aggregation state has shares but no key directory: damaged state file")
                s = setup
                c._pair_seeds = {p: pairwise_seed(bytes(c._mask_sk), c.mask_public_key, c._directory[p].mask_public_key,
                                                  s.study_id, s.round_index, c.hospital, p) for p in c._u1 if p != c.hospital}
            c._answered = None if state["answered"] is None else tuple(state["answered"])
        except (KeyError, TypeError, ValueError, StopIteration) as exc:
            if isinstance(exc, SecAggError):
                raise
            raise SecAggError(f"secure-aggregation state file is damaged ({exc!r}): the node cannot resume this round") from None
        return c
