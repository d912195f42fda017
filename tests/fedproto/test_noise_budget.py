"""A poisoned aggregate: an upload under another key passes every platform check; the key holders
see it (decrypt_aggregate raises PoisonedAggregateError, not an overflow) and name it by each upload's
noise budget, which decodes no value."""

import numpy as np
import pytest

from fedproto.codec import get_codec
from fedproto.errors import PoisonedAggregateError

N_PARAMS = 5000


@pytest.fixture(scope="module", params=["bfv-packed-raw-v1", "bfv-packed-v1"])
def setup(request):
    codec = get_codec(request.param)
    enc = codec.validate_config({"codec": request.param})
    study_key = codec.generate_secret(enc)
    foreign_key = codec.generate_secret(enc)
    rng = np.random.default_rng(1)
    honest = [codec.encrypt_update(study_key, enc, rng.normal(0, 0.1, N_PARAMS), 100, rng) for _ in range(2)]
    foreign = codec.encrypt_update(foreign_key, enc, rng.normal(0, 0.1, N_PARAMS), 100, rng)
    return codec, enc, study_key, foreign_key, honest, foreign


def test_honest_uploads_have_budget_and_a_foreign_one_has_none(setup):
    codec, enc, study_key, _, honest, foreign = setup
    for upload in honest:
        assert codec.noise_budget(study_key, enc, upload) > 0
    assert codec.noise_budget(study_key, enc, foreign) == 0


def test_a_foreign_upload_passes_the_platform_but_poisons_the_aggregate(setup):
    codec, enc, study_key, _, honest, foreign = setup
    ctx = codec.load_params(codec.public_params(study_key))
    for part in foreign:
        codec.inspect_part(ctx, part)  # the platform cannot tell: same parameters, well-formed
    agg = codec.aggregate(ctx, [*honest, foreign])
    with pytest.raises(PoisonedAggregateError, match="another key"):
        codec.decrypt_aggregate(study_key, enc, agg, N_PARAMS)
    # the aggregate's own budget is gone too; without the culprit it decrypts again
    assert codec.noise_budget(study_key, enc, agg) == 0
    res = codec.decrypt_aggregate(study_key, enc, codec.aggregate(ctx, honest), N_PARAMS)
    assert res.n_contributors == 2


def test_the_culprit_sees_the_honest_uploads_as_foreign(setup):
    """Why one report cannot exclude an upload: under the culprit's key the honest uploads have no
    budget. The platform acts only on reports of several other key holders (docs/security.md)."""
    codec, enc, _, foreign_key, honest, foreign = setup
    assert codec.noise_budget(foreign_key, enc, foreign) > 0
    assert all(codec.noise_budget(foreign_key, enc, u) == 0 for u in honest)
