"""bfv-packed-raw-v1 against real TenSEAL/SEAL: same guarantees as bfv-packed-v1, raw parts added in numpy."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from test_codec import _ckks_tenseal, _fedavg, _other_bfv_ciphertext

from fedproto.codec import CODECS, DEFAULT_CODEC, bfv_packed, bfv_params, bfv_raw, get_codec, seal_io
from fedproto.errors import CodecError, SpecError

NAME = "bfv-packed-raw-v1"


@pytest.fixture(scope="module")
def raw():
    codec = get_codec(NAME)
    enc = codec.validate_config({"codec": NAME})
    secret = codec.generate_secret(enc)
    public = codec.public_params(secret)
    return codec, enc, secret, public, codec.load_params(public)


def _good(raw, n=50):
    codec, enc, secret, *_ = raw
    return codec.encrypt_update(secret, enc, np.ones(n), 10, np.random.default_rng(0))


def _patch(blob: bytes, offset: int, data: bytes) -> bytes:
    b = bytearray(blob)
    b[offset:offset + len(data)] = data
    return bytes(b)


def _residue_offset(poly: int, prime: int, coeff: int) -> int:
    return (bfv_raw.RAW_HEADER.size + poly * bfv_raw.POLY_BYTES + bfv_raw._RES_OFFSETS[prime]
            + coeff * bfv_raw.PRIME_BYTES[prime])


def test_registered_with_bfv_packed_parameters(raw):
    codec, enc, *_ = raw
    assert NAME in CODECS and DEFAULT_CODEC == NAME
    assert isinstance(codec, bfv_packed.BfvPackedCodec)  # shares encoding, parameters and checks
    assert enc == {**get_codec("bfv-packed-v1").validate_config({}), "codec": NAME}
    with pytest.raises(SpecError, match="this codec is 'bfv-packed-raw-v1'"):
        codec.validate_config({"codec": "bfv-packed-v1"})
    with pytest.raises(SpecError, match="max_hospitals"):
        codec.validate_config({"codec": NAME, "max_hospitals": 1001})
    d, ref = codec.describe(enc), get_codec("bfv-packed-v1").describe({})
    assert set(d) == set(ref)
    same = {k: v for k, v in ref.items() if k not in ("codec", "encryption", "upload_bytes_per_param",
                                                         "aggregate_bytes_per_param")}
    assert {k: d[k] for k in same} == same
    assert d["codec"] == NAME and "raw" in d["encryption"]
    assert d["upload_bytes_per_param"] == d["aggregate_bytes_per_param"] <= 6.7


def test_part_format_and_size(raw):
    codec, enc, secret, public, ctx = raw
    n = 3 * 4096 * 4 - 6
    parts = codec.encrypt_update(secret, enc, np.zeros(n), 10, np.random.default_rng(0))
    assert len(parts) == codec.n_parts(enc, n) == 4
    assert all(len(p) == bfv_raw.PART_BYTES == 44 + 2 * 4096 * (3 + 3 + 4) for p in parts)
    assert sum(map(len, parts)) / n <= 6.7  # target <= 8 B/param
    magic, ver, n_polys, n_primes, reserved, degree, pid = bfv_raw.RAW_HEADER.unpack_from(parts[0])
    assert (magic, ver, n_polys, n_primes, reserved, degree) == (b"FPBR", 1, 2, 3, 0, 4096)
    assert pid == struct.pack("<4Q", *ctx.parms_id)
    up = bfv_raw.decode_parts(parts)
    for r, q in zip(up.res, bfv_params.COEFF_MODULUS):
        assert r.shape == (4, 2, 4096) and int(r.max()) < q
        assert int(r.max()) > q // 2  # uniformly random residues: the full width is used
    assert bfv_raw.encode_parts(up.res, pid) == parts


def test_seal_serialisation_roundtrip(raw):
    # The layout we parse out of SEAL's serialisation, and rebuild for decryption, is SEAL's.
    codec, enc, secret, public, ctx = raw
    node = codec._node(secret)
    pid = struct.pack("<4Q", *node.context.first_parms_id())
    pt = sealapi.Plaintext()
    node.encoder.encode(list(range(4096)), pt)
    ct = sealapi.Ciphertext()
    node.encryptor.encrypt_symmetric(pt, ct)
    blob = seal_io.save_bytes(ct)
    arr = bfv_raw._seal_ct_arrays(blob, pid)
    assert arr.shape == (2, 3, 4096)
    da = ct.dyn_array()
    assert [da.at(i) for i in (0, 1, 4096, 3 * 4096, 6 * 4096 - 1)] == \
        [int(arr[0, 0, 0]), int(arr[0, 0, 1]), int(arr[0, 1, 0]), int(arr[1, 0, 0]), int(arr[1, 2, 4095])]
    rebuilt = bfv_raw._seal_ct_blob(arr, pid, seal_io.parse_header(public)[1])
    assert np.array_equal(bfv_raw._seal_ct_arrays(rebuilt, pid), arr)
    ct2 = seal_io.load_into(sealapi.Ciphertext(), rebuilt, node.context)
    out = sealapi.Plaintext()
    node.decryptor.decrypt(ct2, out)
    assert list(node.encoder.decode_uint64(out)) == list(range(4096))


def test_roundtrip_equals_weighted_fedavg_and_bfv_packed(raw):
    codec, enc, secret, public, ctx = raw
    rng = np.random.default_rng(1)
    n = 20_000
    ns = [120, 900, 5000]
    updates = [rng.normal(0, 0.02, n) for _ in ns]
    uploads = [codec.encrypt_update(secret, enc, u, s, np.random.default_rng(i)) for i, (u, s) in enumerate(zip(updates, ns))]
    for up in uploads:
        for part in up:
            codec.inspect_part(ctx, part)
    res = codec.decrypt_aggregate(secret, enc, codec.aggregate(ctx, iter(uploads), max_uploads=200), n)
    ref, wsum = _fedavg(updates, ns, enc["weight_cap_samples"])
    assert res.n_contributors == 3 and res.total_weight == wsum == 2020
    step = 2 * enc["update_clip"] / (2 ** enc["quant_bits"] - 1)
    bound = res.n_contributors * step * enc["weight_cap_samples"] / res.total_weight
    assert np.abs(res.mean_update - ref).max() <= bound
    assert abs(float(np.mean(res.mean_update - ref))) < bound / 20
    # the same quantisation (same rng streams) through bfv-packed-v1 decodes to the very same mean
    bfv = get_codec("bfv-packed-v1")
    benc = bfv.validate_config({})
    bsecret = bfv.generate_secret(benc)
    bctx = bfv.load_params(bfv.public_params(bsecret))
    bup = [bfv.encrypt_update(bsecret, benc, u, s, np.random.default_rng(i)) for i, (u, s) in enumerate(zip(updates, ns))]
    bres = bfv.decrypt_aggregate(bsecret, benc, bfv.aggregate(bctx, bup), n)
    assert np.array_equal(bres.mean_update, res.mean_update)


def test_worst_case_sum_of_max_hospitals_is_exact(raw):
    codec, enc, secret, public, ctx = raw
    c, H, cap = enc["update_clip"], enc["max_hospitals"], enc["weight_cap_samples"]
    n = 3 * 4096 + 100
    pattern = np.where(np.arange(n) % 3 == 1, -5.0, 5.0)
    for value, expected in [(pattern, np.where(np.arange(n) % 3 == 1, -c, c)), (np.full(n, 7.0), np.full(n, c))]:
        # distinct encryptions (fresh randomness each), H of them
        ups = [codec.encrypt_update(secret, enc, value, cap, np.random.default_rng(i)) for i in range(4)]
        agg = codec.aggregate(ctx, (ups[i % 4] for i in range(H)), max_uploads=H)
        res, budget = codec.decrypt_aggregate(secret, enc, agg, n, return_noise_budget=True)
        assert res.n_contributors == H and res.total_weight == H * cap
        np.testing.assert_allclose(res.mean_update, expected, rtol=0, atol=1e-12)
        assert budget > 0


def test_more_than_max_hospitals_is_refused(raw):
    codec, enc, secret, public, ctx = raw
    small = dict(enc, max_hospitals=3)
    up = codec.encrypt_update(secret, small, np.ones(10), 5, np.random.default_rng(0))
    with pytest.raises(CodecError, match="more than 3 uploads"):
        codec.aggregate(ctx, [up] * 4, max_uploads=3)
    agg = codec.aggregate(ctx, [up] * 4)
    with pytest.raises(CodecError, match="max_hospitals=3"):
        codec.decrypt_aggregate(secret, small, agg, 10)


# ---------------------------------------------------------------- foreign / malformed data

def _seal_plaintext(raw) -> bytes:
    codec, enc, secret, *_ = raw
    pt = sealapi.Plaintext()
    codec._node(secret).encoder.encode([3] * 4096, pt)
    return seal_io.save_bytes(pt)


def _bfv_packed_part() -> bytes:
    bfv = get_codec("bfv-packed-v1")
    return bfv.encrypt_update(bfv.generate_secret({}), {}, np.ones(5), 1, np.random.default_rng(0))[0]


@pytest.mark.parametrize("kind, msg", [
    ("truncated", "falls short of the exact 81964 bytes"), ("random", "no bfv-packed-raw-v1 header"),
    ("empty", "shorter than the 44-byte"), ("seal_plaintext", "plaintext"),
    ("raw_plaintext", "plaintext"), ("zero_pid", "plaintext"),
    ("other_params_raw", "other encryption parameters"), ("other_params_seal", "SEAL-serialised ciphertext"),
    ("bfv_packed_part", "SEAL-serialised ciphertext"), ("ckks_tenseal", "no bfv-packed-raw-v1 header"),
    ("padded", "padded"), ("not_bytes", "must be bytes"), ("huge", "exceeds"),
    ("version", "format version 2"), ("three_polys", "malformed"), ("degree", "malformed"),
])
def test_malformed_parts_are_rejected(raw, kind, msg):
    codec, enc, secret, public, ctx = raw
    good = _good(raw)
    g = good[0]
    blob = {
        "truncated": lambda: g[: len(g) // 2],
        "random": lambda: os.urandom(len(g)),
        "empty": lambda: b"",
        "seal_plaintext": lambda: _seal_plaintext(raw),
        "raw_plaintext": lambda: _patch(g, 5, b"\x01")[: 44 + bfv_raw.POLY_BYTES],
        "zero_pid": lambda: _patch(g, 12, bytes(32)),
        "other_params_raw": lambda: _patch(g, 12, os.urandom(32)),
        "other_params_seal": _other_bfv_ciphertext,
        "bfv_packed_part": _bfv_packed_part,
        "ckks_tenseal": _ckks_tenseal,
        "padded": lambda: g + b"\0",
        "not_bytes": lambda: "hello",
        "huge": lambda: g * 10,
        "version": lambda: _patch(g, 4, b"\x02"),
        "three_polys": lambda: _patch(g, 5, b"\x03"),
        "degree": lambda: _patch(g, 8, struct.pack("<I", 8192)),
    }[kind]()
    with pytest.raises(CodecError, match=msg):
        codec.inspect_part(ctx, blob)
    with pytest.raises(CodecError, match=r"upload #1 part #0"):
        codec.aggregate(ctx, [good, [blob]])
    with pytest.raises(CodecError, match="aggregate part #0"):
        codec.decrypt_aggregate(secret, enc, [blob], 50)


@pytest.mark.parametrize("poly, prime, value", [(0, 0, 0xFFFFFF), (1, 1, bfv_params.COEFF_MODULUS[1]),
                                                (0, 2, 0xFFFFFFFF), (1, 2, bfv_params.COEFF_MODULUS[2])])
def test_coefficient_out_of_range_is_rejected_and_acc_untouched(raw, poly, prime, value):
    codec, enc, secret, public, ctx = raw
    good = _good(raw, 20_000)  # 2 parts
    nb = bfv_raw.PRIME_BYTES[prime]
    bad = list(good)
    bad[1] = _patch(good[1], _residue_offset(poly, prime, 777), value.to_bytes(nb, "little"))
    codec.inspect_part(ctx, bad[1])  # the cheap request-path check does not read coefficients ...
    with pytest.raises(CodecError, match=rf"upload #1 part #1: a coefficient of residue {prime} is >= its prime"):
        codec.aggregate(ctx, [good, bad])  # ... the full check before adding does
    acc = codec.accumulate(ctx, None, good, 0)
    before = [r.copy() for r in acc.res]
    with pytest.raises(CodecError, match="upload #1 part #1"):
        codec.accumulate(ctx, acc, bad, 1)
    assert all(np.array_equal(a, b) for a, b in zip(acc.res, before))  # a bad upload adds nothing
    with pytest.raises(CodecError, match="aggregate part #1: a coefficient"):
        codec.decrypt_aggregate(secret, enc, bad, 20_000)
    # the largest valid value q_i - 1 is accepted
    ok = _patch(good[1], _residue_offset(poly, prime, 777), (bfv_params.COEFF_MODULUS[prime] - 1).to_bytes(nb, "little"))
    codec.aggregate(ctx, [good, [good[0], ok]])


@pytest.mark.parametrize("chunk", [1, 2, 16])
def test_bad_later_chunk_rolls_back_earlier_chunks(raw, monkeypatch, chunk):
    # The platform adds chunk by chunk; a bad part in a later chunk undoes the chunks already added.
    codec, enc, secret, public, ctx = raw
    monkeypatch.setattr(bfv_raw, "_CHUNK_PARTS", chunk)
    good = _good(raw, 3 * 4096 * 4)  # 5 parts
    assert len(good) == 5
    acc = codec.accumulate(ctx, None, good, 0)
    acc = codec.accumulate(ctx, acc, good, 1)
    before = [r.copy() for r in acc.res]
    bad = list(good)
    bad[4] = _patch(good[4], _residue_offset(1, 0, 5), (0xFFFFFF).to_bytes(3, "little"))
    with pytest.raises(CodecError, match="upload #2 part #4: a coefficient of residue 0"):
        codec.accumulate(ctx, acc, bad, 2)
    assert all(np.array_equal(a, b) for a, b in zip(acc.res, before))
    agg = codec.finish(ctx, codec.accumulate(ctx, acc, good, 2))
    res = codec.decrypt_aggregate(secret, enc, agg, 3 * 4096 * 4)
    assert res.n_contributors == 3 and res.total_weight == 30


def test_transparent_ciphertext_is_rejected(raw):
    codec, enc, secret, public, ctx = raw
    good = _good(raw)
    start = bfv_raw.RAW_HEADER.size + bfv_raw.POLY_BYTES
    blob = _patch(good[0], start, bytes(bfv_raw.POLY_BYTES))  # second polynomial all zero
    codec.inspect_part(ctx, blob)
    with pytest.raises(CodecError, match="upload #0 part #0: second polynomial is zero"):
        codec.aggregate(ctx, [[blob]])


def test_modular_addition_matches_python_ints(raw):
    codec, enc, secret, public, ctx = raw
    rng = np.random.default_rng(5)
    pid = struct.pack("<4Q", *ctx.parms_id)
    # extreme residues: q-1 everywhere sums to (H*(q-1)) mod q at each step
    uploads, ref = [], [np.zeros((2, 2, 4096), dtype=object) for _ in range(3)]
    for h in range(5):
        res = []
        for i, q in enumerate(bfv_params.COEFF_MODULUS):
            r = rng.integers(0, q, (2, 2, 4096), dtype=np.uint64)
            r[:, :, :8] = q - 1
            r[:, :, 8:16] = 0 if h else 1
            res.append(r)
            ref[i] = (ref[i] + r.astype(object)) % q
        uploads.append(bfv_raw.encode_parts(res, pid))
    out = bfv_raw.decode_parts(codec.aggregate(ctx, uploads))
    for r, e in zip(out.res, ref):
        assert np.array_equal(r.astype(object), e)


def test_ciphertext_under_another_key_adds_but_does_not_decrypt(raw):
    codec, enc, secret, public, ctx = raw
    other = codec.generate_secret(enc)
    assert codec.public_params(other) == public  # same parameters: the platform cannot tell
    foreign = codec.encrypt_update(other, enc, np.ones(5), 1, np.random.default_rng(0))
    codec.inspect_part(ctx, foreign[0])
    agg = codec.aggregate(ctx, [foreign])
    with pytest.raises(CodecError):
        codec.decrypt_aggregate(secret, enc, agg, 5)


def test_aggregate_rejects_mismatched_part_counts_and_empty(raw):
    codec, enc, secret, public, ctx = raw
    a, b = _good(raw, 50), _good(raw, 20_000)
    with pytest.raises(CodecError, match="upload #1 has 2 parts, expected 1"):
        codec.aggregate(ctx, [a, b])
    with pytest.raises(CodecError, match="no uploads"):
        codec.aggregate(ctx, [])
    with pytest.raises(CodecError, match="upload #0 has no parts"):
        codec.aggregate(ctx, [[]])
    with pytest.raises(CodecError, match="aggregate has 1 parts, expected 2"):
        codec.decrypt_aggregate(secret, enc, codec.aggregate(ctx, [a]), 20_000)


# ---------------------------------------------------------------- no key on the platform

def test_params_only_context(raw):
    codec, enc, secret, public, ctx = raw
    assert len(public) == len(seal_io.save_bytes(bfv_params.make_parms())) < 200
    assert secret[:4] == b"FPSC" and len(secret) > 40 * len(public)
    node = codec._node(secret)
    kg = sealapi.KeyGenerator(node.context)
    pk = sealapi.PublicKey()
    kg.create_public_key(pk)
    for blob, msg in [(seal_io.save_bytes(kg.secret_key()), "holds key material"),
                      (seal_io.save_bytes(pk), "holds key material"),
                      (secret, "not a bfv-packed-raw-v1 parameters blob"), (os.urandom(70), "no SEAL header"),
                      (b"", "shorter"), ("text", "must be bytes")]:
        with pytest.raises(CodecError, match=msg):
            codec.load_params(blob)
    p = bfv_params.make_parms()
    p.set_plain_modulus(sealapi.PlainModulus.Batching(4096, 40))
    with pytest.raises(CodecError, match="plain modulus .* of bfv-packed-raw-v1"):
        codec.load_params(seal_io.save_bytes(p))
    # the platform context holds no key; aggregation needs nothing but the parameters id
    assert not any(isinstance(v, (sealapi.SecretKey, sealapi.PublicKey)) for v in vars(ctx).values())


def test_secret_blob_is_checked(raw):
    codec, enc, *_ = raw
    with pytest.raises(CodecError, match="generate_secret"):
        codec.encrypt_update(b"garbage", enc, np.ones(3), 1, np.random.default_rng(0))
    bfv = get_codec("bfv-packed-v1")
    with pytest.raises(CodecError, match="not 'bfv-packed-raw-v1'"):
        codec.public_params(bfv.generate_secret(bfv.validate_config({})))
    with pytest.raises(SpecError, match="NaN"):
        codec.encrypt_update(raw[2], enc, np.array([0.0, np.nan]), 1, np.random.default_rng(0))
