"""Federated statistics: exact without noise, bounded sensitivity, calibrated noise, usable constants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedproto import preprocessing, statistics
from fedproto.errors import SpecError
from fedproto.schema import validate_schema
from hospital_node.data import load_csv

SCHEMA = validate_schema({"task": "multiclass_classification", "features": [
    {"name": "age", "type": "float", "range": [0, 100], "missing": "median", "missing_indicator": True},
    {"name": "bmi", "type": "float", "range": [10, 60], "missing": "mean"},
    {"name": "meno", "type": "categorical", "categories": ["Pre", "Post"], "other": True, "missing": "mode"},
    {"name": "grade", "type": "ordinal", "levels": ["I", "II", "III"], "missing": "median"},
    {"name": "smoker", "type": "bool", "missing": "mode"},
    {"name": "pnodes", "type": "int", "center": 5, "scale": 5}],
    "label": {"name": "stage", "type": "class", "classes": ["a", "b", "c"]}, "statistics": {"histogram_bins": 20}})


def _hospital(rng, n, shift):
    rows = []
    for _ in range(n):
        age = "" if rng.random() < 0.1 else f"{min(max(rng.normal(50 + shift, 10), 0), 100):.1f}"
        bmi = "" if rng.random() < 0.2 else f"{rng.uniform(18, 40):.1f}"
        meno = rng.choice(["Pre", "Post", "", "Peri"], p=[0.5, 0.3, 0.1, 0.1])
        grade = rng.choice(["I", "II", "III", ""])
        smoker = rng.choice(["0", "1", ""])
        rows.append(f"{age},{bmi},{meno},{grade},{smoker},{rng.integers(0, 20)},{rng.choice(['a', 'b', 'c'])}")
    return "age,bmi,meno,grade,smoker,pnodes,stage\n" + "\n".join(rows) + "\n"


@pytest.fixture
def hospitals(tmp_path):
    rng = np.random.default_rng(3)
    out = []
    for i, (n, shift) in enumerate([(60, -10), (90, 0), (150, 15)]):
        p = tmp_path / f"h{i}.csv"
        p.write_text(_hospital(rng, n, shift))
        out.append(load_csv(p, SCHEMA))
    return out


def test_the_sum_of_exact_vectors_gives_the_pooled_statistics(hospitals):
    total = sum(statistics.local_vector(SCHEMA, X, y) for X, y in hospitals)
    got = statistics.derive(SCHEMA, total)
    X = np.concatenate([h[0] for h in hospitals])
    y = np.concatenate([h[1] for h in hospitals])
    assert got["n"] == len(X)
    age, bmi = X[:, 0], X[:, 1]
    assert got["features"]["age"]["missing_rate"] == pytest.approx(np.isnan(age).mean())
    assert got["features"]["bmi"]["mean"] == pytest.approx(np.nanmean(bmi))
    assert got["features"]["bmi"]["std"] == pytest.approx(np.nanstd(bmi))
    assert abs(got["features"]["age"]["median"] - np.nanmedian(age)) <= 100 / 20  # one histogram bin
    meno = X[:, 2][~np.isnan(X[:, 2])].astype(int)
    assert got["features"]["meno"]["mode"] == ["Pre", "Post"][int(np.argmax(np.bincount(meno, minlength=3)[:2]))]
    assert got["features"]["meno"]["frequencies"]["__other__"] == pytest.approx((meno == 2).mean())
    assert got["label_counts"] == {c: float((y == i).sum()) for i, c in enumerate("abc")}
    assert "pnodes" in got["features"] and "mean" not in got["features"]["pnodes"]  # fixed constants: no statistics
    doc = preprocessing.build(SCHEMA, got)
    age_doc = doc["features"][0]
    assert age_doc["scaling"] == "federated" and age_doc["center"] == pytest.approx(np.nanmean(age))
    assert age_doc["impute"] == got["features"]["age"]["median"]


def test_one_row_moves_the_vector_by_at_most_the_sensitivity(hospitals):
    X, y = hospitals[2]
    full = statistics.local_vector(SCHEMA, X, y)
    worst = max(np.linalg.norm(full - statistics.local_vector(SCHEMA, np.delete(X, i, 0), np.delete(y, i)))
                for i in range(len(X)))
    assert 0 < worst <= statistics.sensitivity(SCHEMA) + 1e-12
    # the extreme row: every value at the top of its range
    extreme = np.array([[100.0, 60.0, 2.0, 2.0, 1.0, 3.0]])
    step = statistics.local_vector(SCHEMA, extreme, np.array([2]))
    assert np.linalg.norm(step) <= statistics.sensitivity(SCHEMA) + 1e-12


def test_the_noise_is_calibrated_to_the_epsilon():
    delta = 1e-5
    for eps in (0.1, 0.25, 1.0, 3.0):
        std = statistics.noise_for_epsilon(eps, SCHEMA, delta)
        assert statistics.epsilon_of(std, SCHEMA, delta) <= eps
        assert statistics.epsilon_of(std * 0.99, SCHEMA, delta) > eps
    # the classic Gaussian mechanism bound (eps < 1) is looser than the RDP one
    classic = math.sqrt(2 * math.log(1.25 / delta)) * statistics.sensitivity(SCHEMA) / 0.5
    assert statistics.noise_for_epsilon(0.5, SCHEMA, delta) < classic


def test_noisy_statistics_are_always_usable_constants(hospitals):
    rng = np.random.default_rng(0)
    for _ in range(20):  # a tiny epsilon: the sums are mostly noise
        total = 0
        for X, y in hospitals:
            vec, std, spent = statistics.noisy_vector(SCHEMA, X, y, epsilon=0.01, delta=1e-5, rng=rng)
            assert spent <= 0.01 and std > 0
            total = total + vec
        got = statistics.derive(SCHEMA, total)
        preprocessing.check(preprocessing.build(SCHEMA, got))
        for name in ("age", "bmi"):
            st = got["features"][name]
            lo, hi = {"age": (0, 100), "bmi": (10, 60)}[name]
            assert lo <= st["mean"] <= hi and st["std"] > 0 and 0 <= st["missing_rate"] <= 1


@pytest.mark.parametrize("bad", [np.zeros(3), np.full(len(statistics.layout(SCHEMA)), np.nan), np.zeros((2, 2))])
def test_a_malformed_aggregate_is_refused(bad):
    with pytest.raises(SpecError, match="layout"):
        statistics.derive(SCHEMA, bad)


def test_bad_epsilon_is_refused():
    with pytest.raises(SpecError):
        statistics.noise_for_epsilon(0, SCHEMA, 1e-5)


# ----------------------------------------------------------------------------- the statistics round

def test_the_round_spend_is_one_gaussian_mechanism_at_the_schema_share():
    from hospital_node import trainer

    for cap in (0.5, 1.0, 3.0):
        z, q, steps = statistics.spend_entry(SCHEMA, cap, 1e-5)
        assert (q, steps) == (1.0, 1)
        # Opacus' accountant (what the node, the platform's recomputation and the audit report use) agrees
        # with the mechanism's own RDP bound: at most the share, to the last digits
        eps = trainer.epsilon_of([(z, q, steps)], 1e-5)
        assert eps == pytest.approx(statistics.epsilon_of(z * statistics.sensitivity(SCHEMA), SCHEMA, 1e-5), rel=1e-9)
        assert statistics.epsilon_share(SCHEMA) * cap * (1 - 1e-3) <= eps <= statistics.epsilon_share(SCHEMA) * cap


def test_a_contribution_has_noise_z_times_the_sensitivity(hospitals):
    X, y = hospitals[0]
    z = statistics.noise_multiplier(SCHEMA, 1.0, 1e-5)
    exact = statistics.local_vector(SCHEMA, X, y)
    draws = np.array([statistics.contribution(SCHEMA, X, y, z=z, cap=1000, rng=np.random.default_rng(i))[0] - exact
                      for i in range(400)])
    assert draws.std() == pytest.approx(z * statistics.sensitivity(SCHEMA), rel=0.05)
    # a hospital over the declared cap weighs as cap rows, with noise for twice the sensitivity
    vec, std = statistics.contribution(SCHEMA, X, y, z=z, cap=len(X) // 2)
    assert std == pytest.approx(2 * z * statistics.sensitivity(SCHEMA))


def test_check_total_refuses_non_finite_and_out_of_range_sums(hospitals):
    total = sum(statistics.local_vector(SCHEMA, X, y) for X, y in hospitals)
    statistics.check_total(SCHEMA, total, n_contributors=3, z=0.01, cap=1000)  # an honest sum passes
    bad = total.copy()
    bad[1] = np.inf
    with pytest.raises(SpecError, match="not finite"):
        statistics.check_total(SCHEMA, bad, n_contributors=3, z=0.01, cap=1000)
    bad = total.copy()
    bad[0] = 10_000  # more rows than 3 hospitals of at most 1000 can have
    with pytest.raises(SpecError, match="out of range"):
        statistics.check_total(SCHEMA, bad, n_contributors=3, z=0.01, cap=1000)
    bad = total.copy()
    bad[statistics.layout(SCHEMA).index("bmi:u")] = total[0]  # every row at +1 above the centre: impossible
    with pytest.raises(SpecError, match="out of range"):
        statistics.check_total(SCHEMA, bad, n_contributors=3, z=0.01, cap=1000)
    with pytest.raises(SpecError, match="too few for their noise"):
        statistics.check_total(SCHEMA, total, n_contributors=3, z=50.0, cap=1000)


def test_opting_out_scales_locally_and_needs_no_round():
    from fedproto.schema import needs_statistics

    s = validate_schema({"task": "binary_classification", "features": [{"name": "a", "range": [0, 1]}],
                         "label": {"name": "y", "type": "binary"}, "statistics": {"federated": False}})
    assert not needs_statistics(s) and not statistics.enabled(s)
    doc = preprocessing.build(s, None)
    assert doc["features"][0]["scaling"] == "local" and preprocessing.check(doc) is doc
    with pytest.raises(SpecError, match="federated is false"):
        validate_schema({"task": "binary_classification", "features": [{"name": "a", "range": [0, 1], "missing": "mean"}],
                         "label": {"name": "y", "type": "binary"}, "statistics": {"federated": False}})
