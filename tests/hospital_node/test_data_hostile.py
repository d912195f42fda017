"""Hostile and garbage files: every one is a DataError with a clear local message and a public part
that names at most the column and the kind of problem (no path, no row, no cell value)."""

from __future__ import annotations

import re

import pytest

from fedproto.schema import validate_schema
from hospital_node.data import load_csv
from hospital_node.errors import DataError

SCHEMA = validate_schema({"task": "binary_classification", "features": [
    {"name": "age", "type": "float", "range": [0, 120], "missing": "mean", "missing_indicator": True},
    {"name": "meno", "type": "categorical", "categories": ["Pre", "Post"]},
    {"name": "grade", "type": "ordinal", "levels": ["I", "II", "III"]}], "label": {"name": "y", "type": "binary"}})
SECRET = "Zebulon-4711"  # a patient value that must never appear in a public reason

HOSTILE = {
    "binary garbage": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
    "NUL bytes in a row": b"age,meno,grade,y\n40,Pre,I,0\n4\x000,Pre,I,1\n",
    "latin-1 text": "age,meno,grade,y\n40,Pr\xe9,I,0\n".encode("latin-1"),
    "an enormous cell": b"age,meno,grade,y\n40,Pre,I,0\n" + b"9" * 200_000 + b",Pre,I,1\n",
    "an unterminated quote": b'age,meno,grade,y\n40,Pre,I,0\n"' + SECRET.encode() + b',Pre,I,1\n',
    "a secret in a categorical cell": f"age,meno,grade,y\n40,Pre,I,0\n41,{SECRET},I,1\n".encode(),
    "a secret in an ordinal cell": f"age,meno,grade,y\n40,Pre,I,0\n41,Pre,{SECRET},1\n".encode(),
    "a secret as a label": f"age,meno,grade,y\n40,Pre,I,0\n41,Pre,I,{SECRET}\n".encode(),
    "infinity": b"age,meno,grade,y\n40,Pre,I,0\ninf,Pre,I,1\n",
    "a formula": b"age,meno,grade,y\n40,Pre,I,0\n=cmd|' /C calc'!A0,Pre,I,1\n",
    "a duplicated column": b"age,meno,grade,age,y\n40,Pre,I,41,0\n",
    "only a header": b"age,meno,grade,y\n",
    "only a BOM": b"\xef\xbb\xbf",
    "a value out of range": b"age,meno,grade,y\n40,Pre,I,0\n4000,Pre,I,1\n",
}


def _write(tmp_path, data: bytes):
    p = tmp_path / f"{SECRET}_patients.csv"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_file_is_a_clear_data_error_whose_public_part_leaks_nothing(tmp_path, name):
    p = _write(tmp_path, HOSTILE[name])
    with pytest.raises(DataError) as e:
        load_csv(p, SCHEMA)
    public = e.value.public
    assert public and len(public) < 200
    assert SECRET not in public and str(tmp_path) not in public and "calc" not in public
    assert not re.search(r"\b(row|line) \d", public)
    assert str(e.value) != public


def test_a_directory_instead_of_a_file(tmp_path):
    d = tmp_path / SECRET
    d.mkdir()
    with pytest.raises(DataError) as e:
        load_csv(d, SCHEMA)
    assert SECRET not in e.value.public and SECRET in str(e.value)


def test_the_local_message_names_row_and_column_of_an_undeclared_category(tmp_path):
    p = _write(tmp_path, HOSTILE["a secret in a categorical cell"])
    with pytest.raises(DataError) as e:
        load_csv(p, SCHEMA)
    assert "column 'meno', row 2" in str(e.value) and SECRET in str(e.value)
    assert e.value.public == "column 'meno': a value is not one of the declared categories"
