"""Upload bytes and node time: today's codec (encrypt_update) vs the distributed path (encode
slots + pairwise/self masks + encrypt_slots), K hospitals, logistic regression on D features."""

import random
import sys
import time

import numpy as np
from nacl.public import PrivateKey

from fedproto import PROTOCOL_VERSION, ddp_config, ddp_slots, wire
from fedproto.codec import get_codec
from fedproto.secagg import RoundCoordinator, SecAggClient
from fedproto.study import validate_study

D, K = int(sys.argv[1]), int(sys.argv[2])
d = {
    "id": 11,
    "name": "DDP",
    "consortium": "N",
    "protocol_version": PROTOCOL_VERSION,
    "schema": {
        "task": "binary_classification",
        "features": [{"name": f"x{i}", "type": "float", "center": 0.0, "scale": 1.0} for i in range(D)],
        "label": {"name": "y", "type": "binary"},
    },
    "model": {"type": "logistic_regression"},
    "rounds": 5,
    "local_epochs": 1,
    "batch_size": 32,
    "learning_rate": 0.5,
    "quorum": K - 1,
    "round_deadline_s": 600,
    "seed": 5,
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, "mode": "distributed", "collusion": 1},
    "encryption": {"codec": "bfv-packed-v1", "max_hospitals": 20, "quant_bits": 24},
}
study = validate_study(d, n_hospitals=K)
codec = get_codec(study.codec)
secret = codec.generate_secret(study.encryption)
ids = tuple(range(1, K + 1))
setup = ddp_config.round_setup(study, 1, ids)
rnd = random.Random(0)
static = {h: PrivateKey(rnd.randbytes(32)) for h in ids}
pubs = {h: bytes(k.public_key) for h, k in static.items()}
cl = {h: SecAggClient(setup, h, bytes(static[h])) for h in ids}
co = RoundCoordinator(setup)
for h in ids:
    co.add_advert(cl[h].advert())
dr = co.directory()
for h in ids:
    co.add_bundle(cl[h].share(dr, pubs))
for h in ids:
    cl[h].receive(co.inbox(h), pubs)
plan, bounds = ddp_config.noise_plan(study), ddp_config.packing(study)
rng = np.random.default_rng(0)
upd = rng.normal(0, 0.01, study.n_params)


def best(f, n=3):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t0)
    return min(ts), out


t_loc, parts_loc = best(lambda: codec.encrypt_update(secret, study.encryption, upd, 100, rng))
g = rng.integers(-100, 100, study.n_params)
z = rng.integers(-50, 50, study.n_params)


def ddp():
    slots = ddp_slots.encode(g, z, bounds, setup.vector_len)
    return codec.encrypt_slots(secret, cl[1].mask(slots))


t_ddp, parts_ddp = best(ddp)
b_loc, b_ddp = len(wire.pack_parts(parts_loc)), len(wire.pack_parts(parts_ddp))
print(
    f"params {study.n_params} K {K}: local codec {b_loc} B ({b_loc / study.n_params:.1f} B/param) {t_loc * 1000:.1f} ms; "
    f"masked {b_ddp} B ({b_ddp / study.n_params:.1f} B/param) {t_ddp * 1000:.1f} ms (+{(t_ddp / t_loc - 1) * 100:.0f} %)"
)
