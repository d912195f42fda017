"""Platform side of a round: relay keys and sealed shares, track who dropped, unmask the sum.

The platform never sees an unmasked individual update: it receives masked, encrypted uploads,
sealed shares it cannot open, and, after the uploads are closed, shares of the self-mask seeds
of the survivors U2 and of the mask keys of the hospitals that dropped after sharing (D = U1 \\ U2)
- never both for one hospital. From those it computes the correction that turns the sum of the
masked uploads into the sum of the updates (``correction``); it adds it to the aggregate (or
hands it to the decrypting nodes with it). A hospital whose upload arrives after the survivors
were fixed is refused: its pairwise masks are about to be revealed, its self-mask never will be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from nacl.public import PrivateKey

from .errors import SecAggError
from .kdf import pairwise_seed, self_mask_commitment, self_mask_seed
from .masking import correction
from .messages import (
    KeyAdvert,
    KeyDirectory,
    RoundSetup,
    RoundTranscript,
    ShareBundle,
    ShareInbox,
    UnmaskRequest,
    UnmaskResponse,
    check_context,
)
from .shamir import Interpolator


def reconstruct_secrets(setup: RoundSetup, adverts: Mapping[int, KeyAdvert], survivors: Iterable[int],
                        dropped: Iterable[int], responses: Mapping[int, UnmaskResponse]
                        ) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """(mask private keys of the dropped, self-mask secrets b of the survivors) from the survivors'
    shares; refuses a hospital listed as both, fewer than ``threshold`` responses, and any secret
    that does not match what its owner published (mask public key, self-mask commitment)."""
    surv, drop = sorted(set(survivors)), sorted(set(dropped))
    both = set(surv) & set(drop)
    if both:
        raise SecAggError(f"hospital(s) {sorted(both)} listed as survivor and as dropped: reconstructing both the mask key "
                          f"and the self-mask of one hospital would reveal its update; refused")
    stray = [r for r in responses if r not in surv]
    if stray:
        raise SecAggError(f"unmask responses from hospital(s) {stray} that are not survivors")
    interp = Interpolator(responses, setup.threshold)
    mask_keys: dict[int, bytes] = {}
    for i in drop:
        sk = interp.reconstruct({r: resp.mask_key_shares[i] for r, resp in responses.items() if i in resp.mask_key_shares})
        if bytes(PrivateKey(sk).public_key) != adverts[i].mask_public_key:
            raise SecAggError(f"the mask key reconstructed for dropped hospital {i} does not match its advertised public key: "
                              f"some survivor sent a wrong share")
        mask_keys[i] = sk
    self_secrets: dict[int, bytes] = {}
    for j in surv:
        b = interp.reconstruct({r: resp.self_mask_shares[j] for r, resp in responses.items() if j in resp.self_mask_shares})
        if self_mask_commitment(b, setup.study_id, setup.round_index, j) != adverts[j].self_mask_commitment:
            raise SecAggError(f"the self-mask reconstructed for hospital {j} does not match its commitment: "
                              f"some survivor sent a wrong share")
        self_secrets[j] = b
    return mask_keys, self_secrets


def round_correction(setup: RoundSetup, adverts: Mapping[int, KeyAdvert], mask_keys: Mapping[int, bytes],
                     self_secrets: Mapping[int, bytes]) -> np.ndarray:
    """The correction vector mod t for survivors = keys of ``self_secrets``, dropped = keys of ``mask_keys``."""
    s, r = setup.study_id, setup.round_index
    seeds = [self_mask_seed(self_secrets[j], s, r, j) for j in sorted(self_secrets)]
    pairs = [(j, i, pairwise_seed(mask_keys[i], adverts[i].mask_public_key, adverts[j].mask_public_key, s, r, i, j))
             for i in sorted(mask_keys) for j in sorted(self_secrets)]
    return correction(setup.vector_len, setup.modulus, seeds, pairs)


class RoundCoordinator:
    """The platform's state for one round. Call in order: add_advert*, directory, add_bundle*,
    inbox (per hospital), add_upload*, unmask_request, add_unmask_response*, correction."""

    def __init__(self, setup: RoundSetup) -> None:
        self.setup = setup
        self._adverts: dict[int, KeyAdvert] = {}
        self._u0: tuple[int, ...] | None = None
        self._bundles: dict[int, ShareBundle] = {}
        self._u1: tuple[int, ...] | None = None
        self._uploads: set[int] = set()
        self._u2: tuple[int, ...] | None = None
        self._responses: dict[int, UnmaskResponse] = {}
        self._correction: np.ndarray | None = None

    def _need(self, what: str, ids: Iterable[int]) -> None:
        n = len(tuple(ids))
        if n < self.setup.quorum:
            raise SecAggError(f"only {n} hospital(s) {what}; the round needs the quorum of {self.setup.quorum}: "
                              f"wait for more or abort the round")

    def add_advert(self, advert: KeyAdvert) -> None:
        check_context(advert, self.setup)
        if self._u0 is not None:
            raise SecAggError(f"hospital {advert.hospital}'s key advert came after the key directory was sent; "
                              f"it sits this round out")
        if advert.hospital not in self.setup.participants:
            raise SecAggError(f"hospital {advert.hospital} is not a participant of this round")
        old = self._adverts.get(advert.hospital)
        if old is not None and old != advert:
            raise SecAggError(f"hospital {advert.hospital} already advertised a different mask key this round")
        self._adverts[advert.hospital] = advert

    def directory(self) -> KeyDirectory:
        if self._u0 is None:
            self._need("advertised keys", self._adverts)
            self._u0 = tuple(sorted(self._adverts))
        return KeyDirectory(self.setup.study_id, self.setup.round_index, tuple(self._adverts[h] for h in self._u0))

    def add_bundle(self, bundle: ShareBundle) -> None:
        check_context(bundle, self.setup)
        if self._u0 is None or self._u1 is not None:
            raise SecAggError("share bundles are accepted only after the key directory and before the inboxes are sent")
        if bundle.sender not in self._u0:
            raise SecAggError(f"hospital {bundle.sender} did not advertise keys this round")
        expected = set(self._u0) - {bundle.sender}
        if set(bundle.boxes) != expected:
            raise SecAggError(f"hospital {bundle.sender}'s bundle must hold one sealed share for each of {sorted(expected)}, "
                              f"got {sorted(bundle.boxes)}")
        self._bundles[bundle.sender] = bundle

    def inbox(self, recipient: int) -> ShareInbox:
        if self._u1 is None:
            if self._u0 is None:
                raise SecAggError("no key directory yet")
            self._need("sent their shares", self._bundles)
            self._u1 = tuple(sorted(self._bundles))
        if recipient not in self._u1:
            raise SecAggError(f"hospital {recipient} did not send its shares: it sits this round out")
        boxes = {s: self._bundles[s].boxes[recipient] for s in self._u1 if s != recipient}
        return ShareInbox(self.setup.study_id, self.setup.round_index, recipient, self._u1, boxes)

    def add_upload(self, hospital: int) -> None:
        """Record that ``hospital``'s masked upload is in the aggregate."""
        if self._u1 is None or hospital not in self._u1:
            raise SecAggError(f"hospital {hospital} did not complete the share exchange; its upload cannot be unmasked")
        if self._u2 is not None and hospital not in self._u2:
            raise SecAggError(f"hospital {hospital}'s upload is late: the survivors were fixed and it is treated as dropped")
        self._uploads.add(hospital)

    def unmask_request(self) -> UnmaskRequest:
        if self._u2 is None:
            self._need("uploaded", self._uploads)
            self._u2 = tuple(sorted(self._uploads))
        return UnmaskRequest(self.setup.study_id, self.setup.round_index, self._u2)

    @property
    def dropped(self) -> tuple[int, ...]:
        if self._u1 is None or self._u2 is None:
            raise SecAggError("the survivors are not fixed yet")
        return tuple(h for h in self._u1 if h not in self._u2)

    def add_unmask_response(self, resp: UnmaskResponse) -> None:
        check_context(resp, self.setup)
        if self._u2 is None:
            raise SecAggError("no unmask request was sent")
        if resp.sender not in self._u2:
            raise SecAggError(f"hospital {resp.sender} is not a survivor of this round")
        if set(resp.mask_key_shares) != set(self.dropped) or set(resp.self_mask_shares) != set(self._u2):
            raise SecAggError(f"hospital {resp.sender} must send mask-key shares for exactly {list(self.dropped)} and "
                              f"self-mask shares for exactly {list(self._u2)}")
        self._responses[resp.sender] = resp

    def correction(self) -> np.ndarray:
        """Add to the decrypted aggregate mod t to get the sum of the survivors' updates."""
        if self._correction is None:
            if self._u2 is None:
                raise SecAggError("no unmask request was sent")
            adverts = self._adverts
            keys, secrets_ = reconstruct_secrets(self.setup, adverts, self._u2, self.dropped, self._responses)
            self._correction = round_correction(self.setup, adverts, keys, secrets_)
        return self._correction

    def transcript(self) -> RoundTranscript:
        u0, u1, u2 = self._u0 or (), self._u1 or (), self._u2 or ()
        return RoundTranscript(self.setup.study_id, self.setup.round_index, u0, u1, u2,
                               tuple(h for h in u1 if h not in u2) if self._u2 is not None else (),
                               self.setup.threshold, self.setup.quorum, self.setup.collusion)
