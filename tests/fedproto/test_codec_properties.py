"""Property tests for bfv-packed-v1 (and bfv-packed-raw-v1): the digit layout never carries, and encrypted
sums are exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedproto.codec import bfv_params, bfv_raw, get_codec

CODEC = get_codec("bfv-packed-v1")
RAW = get_codec("bfv-packed-raw-v1")


@pytest.fixture(scope="module")
def keys():
    # The BFV parameters do not depend on the config, so one secret serves every example.
    secret = CODEC.generate_secret(CODEC.validate_config({}))
    return secret, CODEC.load_params(CODEC.public_params(secret))


@pytest.fixture(scope="module")
def raw_keys():
    secret = RAW.generate_secret(RAW.validate_config({"codec": RAW.name}))
    return secret, RAW.load_params(RAW.public_params(secret))


@settings(max_examples=300, deadline=None)
@given(max_hospitals=st.integers(1, 1000), quant_bits=st.integers(4, 24))
def test_layout_is_exact_and_tight(max_hospitals, quant_bits):
    enc = CODEC.validate_config({"max_hospitals": max_hospitals, "quant_bits": quant_bits})
    B, k = bfv_params.layout(enc)
    top = max_hospitals * ((1 << quant_bits) - 1)
    assert top < (1 << B)  # a digit holds the sum of max_hospitals maximal values
    worst = sum(top << (B * d) for d in range(k))
    assert k >= 1 and worst < bfv_params.PLAIN_MODULUS and B * k <= 64
    assert sum(top << (B * d) for d in range(k + 1)) >= bfv_params.PLAIN_MODULUS or B * (k + 1) > 64


_SUM_ARGS = dict(quant_bits=st.integers(4, 16), max_hospitals=st.integers(1, 50), data=st.data())


def _check_encrypted_sum(codec, keys, quant_bits, max_hospitals, data):
    secret, ctx = keys
    clip = data.draw(st.sampled_from([0.01, 0.5, 1.0, 3.0]))
    cap = data.draw(st.integers(1, 5000))
    enc = codec.validate_config({"codec": codec.name, "max_hospitals": max_hospitals, "quant_bits": quant_bits,
                                 "update_clip": clip, "weight_cap_samples": cap})
    h = data.draw(st.integers(1, min(max_hospitals, 5)))
    n = data.draw(st.integers(1, 300))
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    ns = [data.draw(st.integers(1, 2 * cap)) for _ in range(h)]
    # include values beyond the clip: the reference applies the same weighting and clipping
    ups = [rng.uniform(-2 * clip, 2 * clip, n) for _ in range(h)]
    uploads = [codec.encrypt_update(secret, enc, u, s, rng) for u, s in zip(ups, ns)]
    res = codec.decrypt_aggregate(secret, enc, codec.aggregate(ctx, uploads, max_uploads=max_hospitals), n)
    w = np.array([min(s, cap) for s in ns], dtype=np.float64)
    ref = sum(np.clip(u * wi / cap, -clip, clip) for u, wi in zip(ups, w)) / (w.sum() / cap)
    step = 2 * clip / ((1 << quant_bits) - 1)
    assert res.n_contributors == h and res.total_weight == w.sum()
    assert np.abs(res.mean_update - ref).max() <= h * step * cap / w.sum() * (1 + 1e-9) + 1e-12


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**_SUM_ARGS)
def test_encrypted_sum_matches_weighted_fedavg(keys, quant_bits, max_hospitals, data):
    _check_encrypted_sum(CODEC, keys, quant_bits, max_hospitals, data)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**_SUM_ARGS)
def test_raw_encrypted_sum_matches_weighted_fedavg(raw_keys, quant_bits, max_hospitals, data):
    _check_encrypted_sum(RAW, raw_keys, quant_bits, max_hospitals, data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 8), parts=st.integers(1, 3), seed=st.integers(0, 2 ** 32 - 1),
       edge=st.sampled_from(["uniform", "max", "zero", "mixed"]))
def test_raw_numpy_addition_is_exact_mod_q(raw_keys, h, parts, seed, edge):
    # encode -> (platform) check + add mod q_i in numpy -> decode equals the Python-int sum mod q_i
    _, ctx = raw_keys
    pid = bfv_raw._pid_bytes(ctx.parms_id)
    rng = np.random.default_rng(seed)
    ref = [np.zeros((parts, 2, 4096), dtype=object) for _ in bfv_params.COEFF_MODULUS]
    uploads = []
    for _ in range(h):
        res = []
        for i, q in enumerate(bfv_params.COEFF_MODULUS):
            r = rng.integers(0, q, (parts, 2, 4096), dtype=np.uint64)
            if edge == "max":
                r[:] = q - 1
            elif edge == "zero":
                r[:, 0] = 0  # the first polynomial may be zero (not the second: that is a transparent part)
            elif edge == "mixed":
                r[:, :, ::2] = q - 1
            res.append(r)
            ref[i] = (ref[i] + r.astype(object)) % q
        parts_bytes = bfv_raw.encode_parts(res, pid)
        assert all(len(p) == bfv_raw.PART_BYTES for p in parts_bytes)
        uploads.append(parts_bytes)
    out = bfv_raw.decode_parts(RAW.aggregate(ctx, uploads, max_uploads=h))
    for r, e in zip(out.res, ref):
        assert np.array_equal(r.astype(object), e)


@settings(max_examples=200, deadline=None)
@given(quant_bits=st.integers(4, 24), seed=st.integers(0, 2 ** 32 - 1), clip=st.floats(1e-3, 10.0))
def test_quantisation_stays_in_range_and_error_below_one_step(quant_bits, seed, clip):
    enc = CODEC.validate_config({"quant_bits": quant_bits, "update_clip": clip})
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3 * clip, 3 * clip, 257)
    q, wnum = CODEC.quantise(enc, x, 1000, rng)
    L = (1 << quant_bits) - 1
    assert q.dtype == np.uint64 and int(q.max()) <= L and wnum == 1000
    step = 2 * clip / L
    assert np.all(np.abs(q.astype(np.float64) * step - clip - np.clip(x, -clip, clip)) <= step * (1 + 1e-9))
