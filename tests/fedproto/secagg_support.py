"""Helpers for the secure-aggregation tests: one round driven end to end over JSON, and a
uniformity statistic."""

from __future__ import annotations

import json
import random

import numpy as np
from nacl.public import PrivateKey
from scipy.stats import chisquare

from fedproto.secagg import (
    KeyAdvert,
    KeyDirectory,
    RoundCoordinator,
    RoundSetup,
    SecAggClient,
    ShareBundle,
    ShareInbox,
    UnmaskRequest,
    UnmaskResponse,
    min_threshold,
)

T60 = 1152921504606830593  # bfv-packed-v1's plain modulus (checked against the codec in test_secagg_bounds.py)


class Round:
    """Clients + coordinator for one round, every message passed through JSON as on the wire."""

    def __init__(self, setup: RoundSetup, seed: int = 0) -> None:
        rnd = random.Random(seed)
        self.setup = setup
        self.static = {h: PrivateKey(rnd.randbytes(32)) for h in setup.participants}
        self.pubs = {h: bytes(k.public_key) for h, k in self.static.items()}
        self.clients = {h: SecAggClient(setup, h, bytes(self.static[h]), random_bytes=rnd.randbytes,
                                        randbelow=rnd.randrange) for h in setup.participants}
        self.co = RoundCoordinator(setup)

    @staticmethod
    def wire(msg, cls):
        return cls.from_dict(json.loads(json.dumps(msg.to_dict())))

    def run(self, u0, u1, u2, values):
        for h in u0:
            self.co.add_advert(self.wire(self.clients[h].advert(), KeyAdvert))
        directory = self.wire(self.co.directory(), KeyDirectory)
        for h in u1:
            self.co.add_bundle(self.wire(self.clients[h].share(directory, self.pubs), ShareBundle))
        for h in u0:
            if h not in u1:  # advertised, then shared nothing: the others still sealed shares for it
                self.clients[h].share(directory, self.pubs)
        uploads = {}
        for h in u1:
            self.clients[h].receive(self.wire(self.co.inbox(h), ShareInbox), self.pubs)
        for h in u2:
            uploads[h] = self.clients[h].mask(values[h])
            self.co.add_upload(h)
        request = self.wire(self.co.unmask_request(), UnmaskRequest)
        for h in request.survivors:
            self.co.add_unmask_response(self.wire(self.clients[h].unmask(request), UnmaskResponse))
        return uploads


def make_setup(ids, *, threshold=None, quorum=None, collusion=0, modulus=T60, n=16, study="s-1", rnd=3):
    k = len(ids)
    thr = threshold if threshold is not None else min_threshold(k, collusion)
    return RoundSetup(study, rnd, tuple(ids), thr, quorum if quorum is not None else thr, collusion, modulus, n)


def uniformity(v: np.ndarray, t: int) -> tuple[float, float, int]:
    """(chi-square p-value over 256 exact equal-mass bins of [0, t), p-value of the low byte, number
    of repeated values). For n uniform draws mod t ~ 2^60 a repeat has probability n^2 / 2t < 1e-8."""
    bins = 256
    edges = [-(-k * t // bins) for k in range(bins + 1)]
    expected = np.diff(np.array(edges, dtype=object)).astype(float) / t * v.size
    counts = np.bincount(np.searchsorted(np.array(edges[1:-1], dtype=np.uint64), v, side="right"), minlength=bins)
    low = np.bincount((v % np.uint64(256)).astype(np.int64), minlength=256)
    return chisquare(counts, expected).pvalue, chisquare(low).pvalue, v.size - np.unique(v).size
