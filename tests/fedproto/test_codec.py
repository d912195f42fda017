"""fedproto.codec against real TenSEAL/SEAL: exact sums, rejection of foreign data, no keys on the platform."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from fedproto.codec import CODECS, DEFAULT_CODEC, AggregateResult, bfv_params, get_codec, public_params_sha256, seal_io
from fedproto.errors import CodecError, SpecError


@pytest.fixture(scope="module")
def bfv():
    codec = get_codec("bfv-packed-v1")
    enc = codec.validate_config({})
    secret = codec.generate_secret(enc)
    public = codec.public_params(secret)
    return codec, enc, secret, public, codec.load_params(public)


def _fedavg(updates, n_samples, cap):
    w = np.array([min(n, cap) for n in n_samples], dtype=np.float64)
    return sum(wi * u for wi, u in zip(w, updates)) / w.sum(), w.sum()


def test_registry_and_defaults():
    assert DEFAULT_CODEC == "bfv-packed-raw-v1"
    assert set(CODECS) == {"bfv-packed-v1", "bfv-packed-raw-v1", "ckks-flare"}
    assert get_codec(None).name == DEFAULT_CODEC
    with pytest.raises(SpecError, match="unknown encryption codec"):
        get_codec("rot13")
    enc = get_codec("bfv-packed-v1").validate_config({"codec": "bfv-packed-v1"})
    assert enc == {"codec": "bfv-packed-v1", "max_hospitals": 200, "quant_bits": 12, "update_clip": 1.0,
                   "weight_cap_samples": 1000}


@pytest.mark.parametrize("bad, msg", [
    ({"quant_bits": 3}, "quant_bits"), ({"quant_bits": 25}, "quant_bits"), ({"quant_bits": 12.5}, "integer"),
    ({"max_hospitals": 0}, "max_hospitals"), ({"max_hospitals": 1001}, "max_hospitals"),
    ({"update_clip": float("nan")}, "update_clip"), ({"update_clip": -1}, "update_clip"),
    ({"update_clip": "1"}, "number"), ({"weight_cap_samples": 0}, "weight_cap_samples"),
    ({"max_hospitals": True}, "number"), ({"colour": "blue"}, "unknown encryption setting"),
    ({"codec": "ckks-flare"}, "this codec is"),
])
def test_validate_config_rejects_with_fix_it_message(bad, msg):
    with pytest.raises(SpecError, match=msg):
        get_codec("bfv-packed-v1").validate_config(bad)


def test_describe_reports_parameters(bfv):
    codec, enc, *_ = bfv
    d = codec.describe(enc)
    assert d["poly_modulus_degree"] == 4096
    assert d["plain_modulus"] == bfv_params.PLAIN_MODULUS
    assert d["plain_modulus"] < 2 ** 60 and d["plain_modulus"] % (2 * 4096) == 1
    assert d["coeff_mod_bit_sizes"] == [24, 24, 32] and d["security_level_bits"] == 128
    assert d["values_per_slot"] == 3 and d["digit_bits"] == 20 and d["quant_bits"] == 12
    assert d["headroom"]["max_exact_contributors"] >= 200
    assert d["upload_bytes_per_param"] <= 4.0


def test_roundtrip_equals_weighted_fedavg_within_quantisation_bound(bfv):
    codec, enc, secret, public, ctx = bfv
    rng = np.random.default_rng(1)
    n = 20_000
    ns = [120, 900, 5000]  # the last one is capped at weight_cap_samples
    updates = [rng.normal(0, 0.02, n) for _ in ns]
    uploads = [codec.encrypt_update(secret, enc, u, s, rng) for u, s in zip(updates, ns)]
    assert all(len(up) == codec.n_parts(enc, n) for up in uploads)
    for up in uploads:
        for part in up:
            codec.inspect_part(ctx, part)
    agg = codec.aggregate(ctx, iter(uploads))
    res = codec.decrypt_aggregate(secret, enc, agg, n)
    assert isinstance(res, AggregateResult)
    ref, wsum = _fedavg(updates, ns, enc["weight_cap_samples"])
    assert res.n_contributors == 3 and res.total_weight == wsum == 2020
    step = 2 * enc["update_clip"] / (2 ** enc["quant_bits"] - 1)
    bound = res.n_contributors * step * enc["weight_cap_samples"] / res.total_weight
    err = np.abs(res.mean_update - ref)
    assert err.max() <= bound
    assert res.mean_update.dtype == np.float64 and res.mean_update.shape == (n,)
    # stochastic rounding is unbiased: the mean error is far below one step
    assert abs(float(np.mean(res.mean_update - ref))) < bound / 20


def test_uploads_are_seeded_and_small(bfv):
    codec, enc, secret, *_ = bfv
    n = 3 * 4096 * 4 - 6
    parts = codec.encrypt_update(secret, enc, np.zeros(n), 10, np.random.default_rng(0))
    assert len(parts) == 4
    per_param = sum(map(len, parts)) / n
    assert per_param <= 4.0, per_param  # a full (unseeded) ciphertext would be ~7.7


def _worst_case(bfv, value, n, hospitals):
    codec, enc, secret, public, ctx = bfv
    cap = enc["weight_cap_samples"]
    up = codec.encrypt_update(secret, enc, value, cap, np.random.default_rng(0))
    agg = codec.aggregate(ctx, (up for _ in range(hospitals)), max_uploads=enc["max_hospitals"])
    res, budget = codec.decrypt_aggregate(secret, enc, agg, n, return_noise_budget=True)
    return res, budget


def test_worst_case_sum_of_max_hospitals_is_exact(bfv):
    codec, enc, *_ = bfv
    c, H = enc["update_clip"], enc["max_hospitals"]
    n = 3 * 4096 + 100  # two parts, the header part is full
    pattern = np.where(np.arange(n) % 3 == 1, -5.0, 5.0)  # beyond the clip: max, min, max digits
    res, budget = _worst_case(bfv, pattern, n, H)
    assert res.n_contributors == H and res.total_weight == H * enc["weight_cap_samples"]
    expected = np.where(np.arange(n) % 3 == 1, -c, c)
    np.testing.assert_allclose(res.mean_update, expected, rtol=0, atol=1e-12)
    assert budget > 0  # the measured worst-case noise budget after max_hospitals additions
    res, _ = _worst_case(bfv, np.full(n, 7.0), n, H)  # every digit at its maximum
    np.testing.assert_allclose(res.mean_update, c, rtol=0, atol=1e-12)


def test_more_than_max_hospitals_is_refused(bfv):
    codec, enc, secret, public, ctx = bfv
    small = dict(enc, max_hospitals=3)
    up = codec.encrypt_update(secret, small, np.ones(10), 5, np.random.default_rng(0))
    with pytest.raises(CodecError, match="more than 3 uploads"):
        codec.aggregate(ctx, [up] * 4, max_uploads=3)
    agg = codec.aggregate(ctx, [up] * 4)  # the platform forgot the limit: the node notices
    with pytest.raises(CodecError, match="max_hospitals=3"):
        codec.decrypt_aggregate(secret, small, agg, 10)


# ---------------------------------------------------------------- foreign data

def _other_bfv_ciphertext() -> bytes:
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(4096)
    parms.set_coeff_modulus(sealapi.CoeffModulus.BFVDefault(4096, sealapi.SEC_LEVEL_TYPE.TC128))
    parms.set_plain_modulus(sealapi.PlainModulus.Batching(4096, 20))
    ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    enc = sealapi.Encryptor(ctx, sealapi.KeyGenerator(ctx).secret_key())
    pt = sealapi.Plaintext()
    sealapi.BatchEncoder(ctx).encode([1] * 4096, pt)
    return seal_io.save_bytes(enc.encrypt_symmetric(pt))


def _same_params_other_key(bfv) -> bytes:
    codec, enc, *_ = bfv
    other = codec.generate_secret(enc)
    return codec.encrypt_update(other, enc, np.ones(5), 1, np.random.default_rng(0))[0]


def _plaintext(bfv) -> bytes:
    codec, enc, secret, *_ = bfv
    node = codec._node(secret)
    pt = sealapi.Plaintext()
    node.encoder.encode([3] * 4096, pt)
    return seal_io.save_bytes(pt)


def _ckks_tenseal() -> bytes:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2 ** 40
    return ts.ckks_vector(ctx, [1.0, 2.0]).serialize()


def _ckks_seal() -> bytes:
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(4096)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(4096, [24, 24, 32]))
    ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    enc = sealapi.Encryptor(ctx, sealapi.KeyGenerator(ctx).secret_key())
    pt = sealapi.Plaintext()
    sealapi.CKKSEncoder(ctx).encode([1.0] * 8, 2.0 ** 20, pt)
    return seal_io.save_bytes(enc.encrypt_symmetric(pt))


@pytest.mark.parametrize("kind, msg", [
    ("truncated", "truncated"), ("random", "no SEAL header"), ("empty", "shorter than a SEAL header"),
    ("plaintext", "plaintext"), ("other_params", "other encryption parameters"),
    ("ckks_tenseal", "no SEAL header|exceeds"), ("ckks_seal", "other encryption parameters"),
    ("padded", "padded"), ("not_bytes", "must be bytes"), ("huge", "exceeds"),
])
def test_malformed_parts_are_rejected(bfv, kind, msg):
    codec, enc, secret, public, ctx = bfv
    good = codec.encrypt_update(secret, enc, np.ones(50), 10, np.random.default_rng(0))
    blob = {
        "truncated": lambda: good[0][: len(good[0]) // 2],
        "random": lambda: os.urandom(len(good[0])),
        "empty": lambda: b"",
        "plaintext": lambda: _plaintext(bfv),
        "other_params": _other_bfv_ciphertext,
        "ckks_tenseal": _ckks_tenseal,
        "ckks_seal": _ckks_seal,
        "padded": lambda: good[0] + b"\0",
        "not_bytes": lambda: "hello",
        "huge": lambda: good[0] * 10,
    }[kind]()
    with pytest.raises(CodecError, match=msg):
        codec.inspect_part(ctx, blob)
    with pytest.raises(CodecError, match=r"upload #1 part #0"):
        codec.aggregate(ctx, [good, [blob]])


def test_corrupted_body_with_valid_header_is_rejected_by_aggregate(bfv):
    codec, enc, secret, public, ctx = bfv
    good = codec.encrypt_update(secret, enc, np.ones(50), 10, np.random.default_rng(0))
    bad = bytearray(good[0])
    for i in range(200, len(bad), 97):
        bad[i] ^= 0x5A
    with pytest.raises(CodecError, match=r"upload #2 part #0"):
        codec.aggregate(ctx, [good, good, [bytes(bad)]])


def test_ciphertext_under_another_key_adds_but_does_not_decrypt(bfv):
    # Same parameters, other key: the platform cannot tell (it has no key), the node can.
    codec, enc, secret, public, ctx = bfv
    foreign = _same_params_other_key(bfv)
    codec.inspect_part(ctx, foreign)
    agg = codec.aggregate(ctx, [[foreign]])
    with pytest.raises(CodecError):
        codec.decrypt_aggregate(secret, enc, agg, 5)


def test_aggregate_rejects_mismatched_part_counts_and_empty(bfv):
    codec, enc, secret, public, ctx = bfv
    a = codec.encrypt_update(secret, enc, np.ones(50), 10, np.random.default_rng(0))
    b = codec.encrypt_update(secret, enc, np.ones(20000), 10, np.random.default_rng(0))
    with pytest.raises(CodecError, match="upload #1 has 2 parts, expected 1"):
        codec.aggregate(ctx, [a, b])
    with pytest.raises(CodecError, match="no uploads"):
        codec.aggregate(ctx, [])


# ---------------------------------------------------------------- no key on the platform

def test_public_params_hold_no_key(bfv):
    codec, enc, secret, public, ctx = bfv
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
    seal_io.load_into(parms, public)  # it is an EncryptionParameters serialisation ...
    assert parms.poly_modulus_degree() == 4096
    # ... and exactly the size of one: re-serialising fresh parameters gives the same length
    assert len(public) == len(seal_io.save_bytes(bfv_params.make_parms())) < 200
    node = codec._node(secret)
    sk_size = len(secret)
    assert sk_size > 40 * len(public)  # a secret key alone is tens of KiB
    assert public_params_sha256(public) == codec.public_params_sha256(public)
    assert len(public_params_sha256(public)) == 64
    assert node.public == public
    assert secret[:4] == b"FPSC"  # our container, never a pickle


def test_load_params_rejects_keys_and_junk(bfv):
    codec, enc, secret, public, ctx = bfv
    node = codec._node(secret)
    kg = sealapi.KeyGenerator(node.context)
    sk_blob = seal_io.save_bytes(kg.secret_key())
    pk = sealapi.PublicKey()
    kg.create_public_key(pk)
    pk_blob = seal_io.save_bytes(pk)
    for blob, msg in [(sk_blob, "holds key material"), (pk_blob, "holds key material"),
                      (secret, "not a bfv-packed-v1 parameters blob"), (os.urandom(70), "no SEAL header"),
                      (b"", "shorter"), ("text", "must be bytes")]:
        with pytest.raises(CodecError, match=msg):
            codec.load_params(blob)
    # a small SEAL blob that is not parameters (a tiny plaintext) is refused too
    pt = sealapi.Plaintext()
    pt_blob = seal_io.save_bytes(pt)
    with pytest.raises(CodecError):
        codec.load_params(pt_blob)
    # parameters of another scheme / size are refused
    other = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    other.set_poly_modulus_degree(4096)
    other.set_coeff_modulus(sealapi.CoeffModulus.Create(4096, [24, 24, 32]))
    with pytest.raises(CodecError, match="BFV"):
        codec.load_params(seal_io.save_bytes(other))
    p = bfv_params.make_parms()
    p.set_plain_modulus(sealapi.PlainModulus.Batching(4096, 40))
    with pytest.raises(CodecError, match="plain modulus"):
        codec.load_params(seal_io.save_bytes(p))


def test_secret_blob_is_checked(bfv):
    codec, enc, *_ = bfv
    with pytest.raises(CodecError, match="generate_secret"):
        codec.encrypt_update(b"garbage", enc, np.ones(3), 1, np.random.default_rng(0))
    ck = get_codec("ckks-flare")
    with pytest.raises(CodecError, match="not 'bfv-packed-v1'"):
        codec.public_params(ck.generate_secret(ck.validate_config({"codec": "ckks-flare"})))


def test_bad_updates_are_refused(bfv):
    codec, enc, secret, *_ = bfv
    with pytest.raises(SpecError, match="NaN"):
        codec.encrypt_update(secret, enc, np.array([0.0, np.nan]), 1, np.random.default_rng(0))
    with pytest.raises(SpecError, match="n_samples"):
        codec.encrypt_update(secret, enc, np.zeros(3), 0, np.random.default_rng(0))


def test_ckks_flare_baseline_roundtrip():
    codec = get_codec("ckks-flare")
    enc = codec.validate_config({"codec": "ckks-flare"})
    secret = codec.generate_secret(enc)
    public = codec.public_params(secret)
    ctx = codec.load_params(public)
    rng = np.random.default_rng(3)
    n, ns = 5000, [50, 2000]
    ups = [rng.normal(0, 0.1, n) for _ in ns]
    parts = [codec.encrypt_update(secret, enc, u, s, rng) for u, s in zip(ups, ns)]
    assert len(parts[0]) == codec.n_parts(enc, n) == 3
    for p in parts[0]:
        codec.inspect_part(ctx, p)
    res = codec.decrypt_aggregate(secret, enc, codec.aggregate(ctx, parts), n)
    ref, w = _fedavg(ups, ns, 1000)
    assert res.n_contributors == 2 and abs(res.total_weight - w) < 1e-6
    assert np.abs(res.mean_update - ref).max() < 1e-5
    with pytest.raises(CodecError):
        codec.load_params(codec._ctx(secret).serialize(save_secret_key=True))
