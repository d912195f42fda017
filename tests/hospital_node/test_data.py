"""Validation of local data against the study schema, split and standardisation."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from fedproto.study import StudyConfig
from hospital_node.data import load_csv, load_study_data, prepare
from hospital_node.errors import DataError


def _write(tmp_path, text):
    p = tmp_path / "d.csv"
    p.write_text(text)
    return p


def test_missing_column_is_named(tmp_path, study):
    p = _write(tmp_path, "f0,f1,f3,y\n1,2,3,0\n")
    with pytest.raises(DataError, match=r"no column\(s\) 'f2'"):
        load_csv(p, study["schema"])


def test_non_numeric_value_names_column_and_row(tmp_path, study):
    p = _write(tmp_path, "f0,f1,f2,f3,y\n1,2,3,4,0\n1,2,abc,4,1\n")
    with pytest.raises(DataError) as e:
        load_csv(p, study["schema"])
    msg = str(e.value)
    assert "'f2'" in msg and "row 2" in msg and "'abc'" in msg and "not numeric" in msg


@pytest.mark.parametrize("cell", ["", "NaN", "nan"])
def test_empty_or_nan_cell_is_named(tmp_path, study, cell):
    p = _write(tmp_path, f"f0,f1,f2,f3,y\n1,2,3,4,0\n1,2,3,4,1\n1,{cell},3,4,1\n")
    with pytest.raises(DataError, match=r"empty or NaN value in column 'f1', row 3"):
        load_csv(p, study["schema"])


def test_binary_label_must_be_0_or_1(tmp_path, study):
    p = _write(tmp_path, "f0,f1,f2,f3,y\n1,2,3,4,0\n1,2,3,4,2\n")
    with pytest.raises(DataError, match=r"label '2' in column 'y', row 2 .* not 0 or 1"):
        load_csv(p, study["schema"])


def test_int_and_bool_feature_types(tmp_path, study):
    study["schema"]["features"][0]["type"] = "int"
    study["schema"]["features"][1]["type"] = "bool"
    X, y = load_csv(_write(tmp_path, "f0,f1,f2,f3,y\n3,true,0.5,1,1\n4,0,1.5,2,0\n"), study["schema"])
    assert X[:, :2].tolist() == [[3, 1], [4, 0]] and y.tolist() == [1, 0]
    with pytest.raises(DataError, match=r"'f0', row 1 .* not an integer"):
        load_csv(_write(tmp_path, "f0,f1,f2,f3,y\n3.5,1,0.5,1,1\n"), study["schema"])
    with pytest.raises(DataError, match=r"'f1', row 1 .* not boolean"):
        load_csv(_write(tmp_path, "f0,f1,f2,f3,y\n3,7,0.5,1,1\n"), study["schema"])


def test_missing_file_says_what_to_set(tmp_path, study):
    with pytest.raises(DataError, match=r"\[data\] csv"):
        load_csv(tmp_path / "nope.csv", study["schema"])


def test_split_is_seeded_stratified_80_20(study, config, data_csv):
    a = load_study_data(config, data_csv)
    b = load_study_data(config, data_csv)
    assert a.n_train == 80 and a.n_test == 20
    np.testing.assert_array_equal(a.X_train, b.X_train)
    X, y = load_csv(data_csv, study["schema"])
    assert abs(a.y_test.mean() - y.mean()) <= 0.05  # stratified
    c = load_study_data(dataclasses.replace(config, seed=99), data_csv)
    assert not np.array_equal(a.X_train, c.X_train)


def test_standardisation_reference_else_local(study, data_csv):
    study["schema"]["features"][0].update(center=10.0, scale=2.0)
    X, y = load_csv(data_csv, study["schema"])
    ds = prepare(StudyConfig.from_wire(study), X, y)
    assert ds.center[0] == 10.0 and ds.scale[0] == 2.0
    # local statistics for the others: train split has mean 0, std 1
    np.testing.assert_allclose(ds.X_train[:, 1:].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.X_train[:, 1:].std(axis=0), 1, atol=1e-4)


@pytest.mark.parametrize("text", [
    "f0,f1,f3,y\n1,2,3,0\n",                          # a missing column
    "f0,f1,f2,f3,y\n1,2,3,4,0\n1,2,Pre,4,1\n",         # a non-numeric cell
    "f0,f1,f2,f3,y\n1,2,3,4,0\n1,Pre,3,4,1\n1,,3,4,1\n",
    "f0,f1,f2,f3,y\n1,2,3,4,0\n1,2,3,4,Pre\n",         # a bad label
    "f0,f1,f2,f3,y\n1,2,3,4\n",                        # a short row
    "f0,f1,f2,f3,y\n",                                 # no rows
    "",                                                # empty file
])
def test_the_public_part_of_a_data_error_has_no_path_row_or_cell_value(tmp_path, study, text):
    p = _write(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_csv(p, study["schema"])
    public = e.value.public
    assert public and str(tmp_path) not in public and p.name not in public
    assert "Pre" not in public and not re.search(r"\b(row|line) \d", public)
    assert str(e.value) != public  # the whole story (for the local log) has more


def test_a_missing_file_has_a_public_part_without_its_path(tmp_path, study):
    with pytest.raises(DataError) as e:
        load_csv(tmp_path / "patients_2026.csv", study["schema"])
    assert "patients_2026" not in e.value.public and "patients_2026" in str(e.value)
