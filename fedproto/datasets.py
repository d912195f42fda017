"""Which of a hospital's data sets a study uses (docs/data.md, "Data sets of a node").

A node names its data sets in its config (``[datasets.NAME] path = "..."``); a study names, for
all hospitals or per hospital, the data set it uses. Its normal form, the study's ``datasets``
field on the wire:

    {"default": "default"}                                    # every hospital: its data set "default"
    {"default": "cohort2024", "hospitals": {"12": "icu_2023"}}  # hospital 12 uses "icu_2023"

A data set name is a key of the node's config, never a path: letters, digits, ``_ . -``, starting
with a letter, digit or ``_`` (so no ``/``, ``\\`` or leading ``.``: ``../x`` is refused), at most 64
characters. The node looks the name up in its config and declines a study whose data set it does
not have, naming the data set only.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .errors import SpecError

DEFAULT_DATASET = "default"
DATASET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_HOSPITAL_DATASETS = 1000
_MAX_ID = 2 ** 63 - 1
DEFAULT_DATASETS = {"default": DEFAULT_DATASET}


def dataset_name(value: Any, where: str = "data set name") -> str:
    """A valid data set name or SpecError (the value shown shortened: it is a name, not a path)."""
    if not isinstance(value, str) or not DATASET_NAME.fullmatch(value):
        raise SpecError(f"{where} {str(value)[:70]!r} is not a data set name: use letters, digits, _ . - (at most "
                        "64, starting with a letter, digit or _); it names a [datasets.NAME] table of the node "
                        "config, never a file path")
    return value


def validate_datasets(raw: Any) -> dict[str, Any]:
    """The normal form of a study's ``datasets``: None -> {"default": "default"}; a string -> that name for
    every hospital; {"default": name, "hospitals": {hospital_id: name}} (ids as decimal strings)."""
    if raw is None:
        return dict(DEFAULT_DATASETS)
    if isinstance(raw, str):
        return {"default": dataset_name(raw, "datasets")}
    if not isinstance(raw, Mapping):
        raise SpecError('datasets must be a data set name, or an object {"default": NAME, "hospitals": '
                        '{"<hospital id>": NAME}}')
    extra = set(raw) - {"default", "hospitals"}
    if extra:
        raise SpecError(f"datasets has unknown field(s) {sorted(map(str, extra))[:5]}; it takes default, hospitals")
    out: dict[str, Any] = {"default": dataset_name(raw.get("default", DEFAULT_DATASET), "datasets.default")}
    per = raw.get("hospitals", {})
    if not isinstance(per, Mapping):
        raise SpecError('datasets.hospitals must be an object {"<hospital id>": NAME}')
    if len(per) > MAX_HOSPITAL_DATASETS:
        raise SpecError(f"datasets.hospitals names {len(per)} hospitals; at most {MAX_HOSPITAL_DATASETS}")
    hospitals: dict[str, str] = {}
    for key, name in per.items():
        text = str(key)
        if isinstance(key, bool) or not (isinstance(key, int) or text.isdigit()) or not 1 <= int(text) <= _MAX_ID:
            raise SpecError(f"datasets.hospitals key {text[:30]!r} is not a hospital id (a positive integer)")
        hid = str(int(text))
        if hid in hospitals:
            raise SpecError(f"datasets.hospitals names hospital {hid} twice")
        hospitals[hid] = dataset_name(name, f"datasets.hospitals[{hid}]")
    if hospitals:
        out["hospitals"] = dict(sorted(hospitals.items(), key=lambda kv: int(kv[0])))
    return out


def dataset_for(datasets: Mapping[str, Any], hospital_id: int | None) -> str:
    """The data set a hospital uses in a study (its own entry, else the study's default)."""
    per = datasets.get("hospitals") or {}
    if hospital_id is not None and str(hospital_id) in per:
        return str(per[str(hospital_id)])
    return str(datasets.get("default", DEFAULT_DATASET))


def hospital_ids(datasets: Mapping[str, Any]) -> list[int]:
    """The hospitals a ``datasets`` value names one by one."""
    return [int(k) for k in datasets.get("hospitals") or {}]


__all__ = ["DATASET_NAME", "DEFAULT_DATASET", "DEFAULT_DATASETS", "dataset_for", "dataset_name", "hospital_ids",
           "validate_datasets"]
