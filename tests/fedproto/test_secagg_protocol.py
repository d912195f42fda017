"""The secure-aggregation round (fedproto.secagg): masks cancel for every dropout pattern within the
threshold; refusals (one survivor list per node, never both masks of a hospital, late uploads,
tampered directories and shares, malformed messages); state across a node restart."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from secagg_support import T60, Round, make_setup, uniformity

from fedproto.secagg import (
    KeyAdvert,
    KeyDirectory,
    RoundSetup,
    SecAggClient,
    SecAggError,
    ShareInbox,
    UnmaskRequest,
    UnmaskResponse,
    add_mod,
    expand_uniform,
    min_threshold,
    reconstruct_secrets,
    shamir,
    sum_mod,
)
from fedproto.secagg.kdf import pairwise_seed


@st.composite
def round_plans(draw):
    k = draw(st.integers(2, 7))
    ids = sorted(draw(st.sets(st.integers(1, 10 ** 6), min_size=k, max_size=k)))
    collusion = draw(st.integers(0, k - 2))
    threshold = draw(st.integers(min_threshold(k, collusion), k))
    quorum = draw(st.integers(threshold, k))

    def some(pool):
        return sorted(draw(st.lists(st.sampled_from(pool), min_size=quorum, max_size=len(pool), unique=True)))

    u0 = some(ids)
    u1 = some(u0)
    u2 = some(u1)
    modulus = draw(st.sampled_from([2, 3, 4096, 65537, T60, (1 << 62) - 1]))
    n = draw(st.integers(1, 40))
    setup = RoundSetup("study-h", draw(st.integers(0, 10 ** 6)), tuple(ids), threshold, quorum, collusion, modulus, n)
    return setup, u0, u1, u2, draw(st.integers(0, 2 ** 32))


@given(round_plans())
@settings(max_examples=80, deadline=None)
def test_masks_cancel_exactly_for_any_dropout_pattern_within_the_threshold(plan):
    setup, u0, u1, u2, seed = plan
    rng = np.random.default_rng(seed)
    values = {h: rng.integers(0, setup.modulus, setup.vector_len, dtype=np.uint64) for h in u2}
    r = Round(setup, seed)
    uploads = r.run(u0, u1, u2, values)
    aggregate = add_mod(sum_mod(uploads.values(), setup.vector_len, setup.modulus), r.co.correction(), setup.modulus)
    expected = [sum(int(values[h][c]) for h in u2) % setup.modulus for c in range(setup.vector_len)]
    assert [int(a) for a in aggregate] == expected
    tr = r.co.transcript()
    assert (list(tr.advertised), list(tr.shared), list(tr.survivors)) == (u0, u1, u2)
    assert list(tr.dropped) == [h for h in u1 if h not in u2]


# ------------------------------------------------------------------ refusals and tampering
def shared_round(ids=(1, 2, 3, 4, 5), collusion=1, n=8):
    setup = make_setup(list(ids), collusion=collusion, n=n)
    r = Round(setup, seed=2)
    for h in ids:
        r.co.add_advert(r.clients[h].advert())
    directory = r.co.directory()
    for h in ids:
        r.co.add_bundle(r.clients[h].share(directory, r.pubs))
    for h in ids:
        r.clients[h].receive(r.co.inbox(h), r.pubs)
    return r


def test_a_node_answers_one_survivor_list_so_no_hospital_is_unmasked_twice():
    r = shared_round()
    first = UnmaskRequest("s-1", 3, (1, 2, 3, 4))  # 5 dropped: its mask-key share is revealed
    resp = r.clients[1].unmask(first)
    assert set(resp.mask_key_shares) == {5} and set(resp.self_mask_shares) == {1, 2, 3, 4}
    assert r.clients[1].unmask(first) == resp  # a repeat gets the same answer
    with pytest.raises(SecAggError, match="already answered"):
        r.clients[1].unmask(UnmaskRequest("s-1", 3, (1, 2, 3, 5)))  # would reveal 5's self-mask share too
    with pytest.raises(SecAggError, match="omits this node"):
        r.clients[2].unmask(UnmaskRequest("s-1", 3, (1, 3, 4, 5)))
    with pytest.raises(SecAggError, match="quorum"):
        r.clients[2].unmask(UnmaskRequest("s-1", 3, (1, 2)))
    with pytest.raises(SecAggError, match="study"):
        r.clients[2].unmask(UnmaskRequest("s-2", 3, (1, 2, 3, 4)))


def test_reconstruction_refuses_both_masks_of_one_hospital_and_too_few_shares():
    r = shared_round()
    adverts = r.co.directory().by_hospital()
    resp = {h: r.clients[h].unmask(UnmaskRequest("s-1", 3, (1, 2, 3, 4))) for h in (1, 2, 3, 4)}
    with pytest.raises(SecAggError, match="survivor and as dropped"):
        reconstruct_secrets(r.setup, adverts, (1, 2, 3, 4), (4,), resp)
    few = {h: resp[h] for h in (1, 2)}
    with pytest.raises(SecAggError, match="cannot reconstruct"):
        reconstruct_secrets(r.setup, adverts, (1, 2, 3, 4), (5,), few)
    forged = dict(resp)
    forged[4] = UnmaskResponse("s-1", 3, 4, {5: (resp[4].mask_key_shares[5] + 1) % shamir.PRIME}, resp[4].self_mask_shares)
    with pytest.raises(SecAggError, match="inconsistent|does not match"):
        reconstruct_secrets(r.setup, adverts, (1, 2, 3, 4), (5,), forged)


def test_a_late_upload_is_refused_and_stays_masked_by_its_self_mask():
    r = shared_round(n=4000)
    x5 = np.zeros(4000, dtype=np.uint64)
    late = r.clients[5].mask(x5)  # computed, but it arrives after the survivors were fixed
    for h in (1, 2, 3, 4):
        r.co.add_upload(h)
    req = r.co.unmask_request()
    with pytest.raises(SecAggError, match="late"):
        r.co.add_upload(5)
    responses = {h: r.clients[h].unmask(req) for h in req.survivors}
    for resp in responses.values():
        r.co.add_unmask_response(resp)
    r.co.correction()
    # The platform now knows 5's mask key, hence every pairwise mask of 5. Removing them leaves
    # x5 + PRG(b5): still masked, and no survivor will ever send a share of b5.
    adverts = r.co.directory().by_hospital()
    keys, _ = reconstruct_secrets(r.setup, adverts, req.survivors, (5,), responses)
    residue = late.copy()
    for j in (1, 2, 3, 4):  # 5 > j: hospital 5 subtracted these masks, so add them back
        seed = pairwise_seed(keys[5], adverts[5].mask_public_key, adverts[j].mask_public_key, "s-1", 3, 5, j)
        residue = add_mod(residue, expand_uniform(seed, 4000, T60), T60)
    assert np.count_nonzero(residue == x5) == 0
    assert uniformity(residue, T60)[2] == 0
    for h in (1, 2, 3, 4):
        with pytest.raises(SecAggError, match="already answered"):
            r.clients[h].unmask(UnmaskRequest("s-1", 3, (1, 2, 3, 4, 5)))


def test_a_tampered_directory_is_refused():
    setup = make_setup([1, 2, 3], n=4)
    r = Round(setup)
    for h in (1, 2, 3):
        r.co.add_advert(r.clients[h].advert())
    good = r.co.directory()
    evil_key = bytes(PrivateKey(bytes([9]) * 32).public_key)  # the platform's own key in place of 3's
    swapped = KeyDirectory("s-1", 3, tuple(KeyAdvert(a.study_id, a.round_index, a.hospital, evil_key, a.self_mask_commitment)
                                           if a.hospital == 3 else a for a in good.adverts))
    with pytest.raises(SecAggError, match="advert unchanged"):
        r.clients[3].share(swapped, r.pubs)
    r.co.add_bundle(r.clients[2].share(good, r.pubs))
    r.co.add_bundle(r.clients[3].share(good, r.pubs))
    r.co.add_bundle(r.clients[1].share(swapped, r.pubs))  # 1 was shown the forged directory
    with pytest.raises(SecAggError, match="a different key directory"):
        r.clients[1].share(good, r.pubs)
    with pytest.raises(SecAggError, match="differs from the advertised"):  # 3's sealed share carries its real key
        r.clients[1].receive(r.co.inbox(1), r.pubs)


def test_a_forged_share_box_and_a_misrouted_inbox_are_refused():
    setup = make_setup([1, 2, 3], n=4)
    r = Round(setup)
    for h in (1, 2, 3):
        r.co.add_advert(r.clients[h].advert())
    d = r.co.directory()
    for h in (1, 2, 3):
        r.co.add_bundle(r.clients[h].share(d, r.pubs))
    inbox = r.co.inbox(1)
    forged = ShareInbox(inbox.study_id, inbox.round_index, 1, inbox.senders, {**inbox.boxes, 2: inbox.boxes[3]})
    with pytest.raises(SecAggError, match="does not open"):
        r.clients[1].receive(forged, r.pubs)
    with pytest.raises(SecAggError, match="addressed to hospital 2"):
        r.clients[1].receive(r.co.inbox(2), r.pubs)
    with pytest.raises(SecAggError, match="one sealed share from each"):
        r.clients[1].receive(ShareInbox("s-1", 3, 1, inbox.senders, {2: inbox.boxes[2]}), r.pubs)
    with pytest.raises(SecAggError, match="shares first"):
        r.clients[1].mask(np.zeros(4, dtype=np.uint64))
    r.clients[1].receive(inbox, r.pubs)
    with pytest.raises(SecAggError, match="outside"):
        r.clients[1].mask(np.full(4, T60, dtype=np.uint64))
    with pytest.raises(SecAggError, match="length 4"):
        r.clients[1].mask(np.zeros(5, dtype=np.uint64))


def test_round_setup_enforces_the_threshold_rules():
    assert min_threshold(10, 3) == 7
    with pytest.raises(SecAggError, match=r"threshold 6 must be in 7\.\.10"):
        RoundSetup("s", 0, tuple(range(1, 11)), 6, 8, 3, T60, 4)
    with pytest.raises(SecAggError, match="quorum"):
        RoundSetup("s", 0, tuple(range(1, 11)), 7, 6, 3, T60, 4)
    with pytest.raises(SecAggError, match="collusion"):
        RoundSetup("s", 0, (1, 2), 2, 2, 2, T60, 4)
    with pytest.raises(SecAggError, match="twice"):
        RoundSetup("s", 0, (1, 1, 2), 2, 2, 0, T60, 4)
    s = RoundSetup("s", 0, tuple(range(1, 11)), 7, 8, 3, T60, 4)
    assert s.honest_noise_shares == 5
    assert RoundSetup.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_coordinator_refuses_out_of_order_and_short_rounds():
    setup = make_setup([1, 2, 3, 4, 5], collusion=1)  # threshold = quorum = 4
    r = Round(setup)
    for h in (1, 2, 3):
        r.co.add_advert(r.clients[h].advert())
    with pytest.raises(SecAggError, match="quorum of 4"):
        r.co.directory()
    r.co.add_advert(r.clients[4].advert())
    r.co.directory()
    with pytest.raises(SecAggError, match="after the key directory"):
        r.co.add_advert(r.clients[5].advert())
    with pytest.raises(SecAggError, match="did not complete"):
        r.co.add_upload(1)


def test_messages_round_trip_and_reject_malformed_input():
    r = shared_round(n=3)
    for msg, cls in [(r.clients[1].advert(), KeyAdvert), (r.co.directory(), KeyDirectory), (r.co.inbox(2), ShareInbox),
                     (UnmaskRequest("s-1", 3, (1, 2, 3, 4)), UnmaskRequest),
                     (r.clients[3].unmask(UnmaskRequest("s-1", 3, (1, 2, 3, 4))), UnmaskResponse)]:
        assert cls.from_dict(json.loads(json.dumps(msg.to_dict()))) == msg
    good = r.clients[1].advert().to_dict()
    for key, value, match in [("kind", "secagg.setup", "expected"), ("protocol", "v0", "not supported"),
                              ("mask_public_key", "!!", "base64"), ("mask_public_key", "AAAA", "32 bytes"),
                              ("hospital", True, "hospital"), ("round", -1, "round"), ("self_mask_commitment", "x", "hex")]:
        with pytest.raises(SecAggError, match=match):
            KeyAdvert.from_dict({**good, key: value})
    resp = r.clients[2].unmask(UnmaskRequest("s-1", 3, (1, 2, 3, 4))).to_dict()
    with pytest.raises(SecAggError, match="decimal strings"):
        UnmaskResponse.from_dict({**resp, "self_mask_shares": {"01": "00"}})
    with pytest.raises(SecAggError, match="hex"):
        UnmaskResponse.from_dict({**resp, "self_mask_shares": {"1": "zz" * 66}})
    with pytest.raises(SecAggError, match="JSON object"):
        UnmaskRequest.from_dict(["secagg.unmask_request"])


def test_client_state_survives_a_restart():
    r = shared_round(n=6)
    x = np.arange(6, dtype=np.uint64)
    before = r.clients[2].mask(x)
    state = json.loads(json.dumps(r.clients[2].export_state()))
    resumed = SecAggClient.from_state(state, bytes(r.static[2]))
    assert np.array_equal(resumed.mask(x), before)
    directory = r.co.directory()
    assert resumed.share(directory, r.pubs) == r.clients[2].share(directory, r.pubs)  # the same shares, not new ones
    req = UnmaskRequest("s-1", 3, (1, 2, 3, 4))
    assert resumed.unmask(req) == r.clients[2].unmask(req)
    with pytest.raises(SecAggError, match="damaged"):
        SecAggClient.from_state({**state, "b": "??"}, bytes(r.static[2]))
