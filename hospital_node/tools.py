"""The data manager's tools: ``check`` a data file against a study before approving it, and
``predict`` with a released model on new raw rows (docs/data.md, "Using a released model").

A model file is safetensors with its preprocessing in the metadata (``package_model``): key
``fedproto.preprocessing`` (the JSON document of fedproto.preprocessing) and ``fedproto.model``
(the model spec, JSON). Nothing here talks to the platform; nothing is unpickled.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fedproto import preprocessing
from fedproto.errors import SpecError
from fedproto.schema import encoded_columns, label_classes, validate_schema

from .data import load_csv
from .encoding import encode
from .errors import DataError

MODEL_KEY = preprocessing.MODEL_KEY


def package_model(state: dict[str, Any], spec: dict[str, Any], doc: dict[str, Any]) -> bytes:
    """safetensors bytes of a model's state dict carrying its spec and preprocessing document.

    Byte for byte the same on every node for the same weights, spec and document (the hospitals
    attest this file's SHA-256 and the platform releases only an attested one): safetensors writes
    its metadata map in a random order, so the header is written again with sorted keys."""
    from safetensors.torch import save

    preprocessing.check(doc)
    raw = save({k: v.detach().float().contiguous() for k, v in state.items()},
               metadata={preprocessing.METADATA_KEY: json.dumps(doc, sort_keys=True),
                         MODEL_KEY: json.dumps(spec, sort_keys=True)})
    return canonical_safetensors(raw)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header re-serialised deterministically (sorted keys,
    no spaces, padded with spaces to a multiple of 8 bytes as safetensors itself pads it)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def read_model(path: str | Path):
    """(torch module, preprocessing document) from a model file, or DataError saying what is wrong."""
    from safetensors import SafetensorError, safe_open

    from .networks import build_model

    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file {path} does not exist", public="the model file does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DataError(f"model file {path} is not a safetensors file ({e})", public="not a safetensors model file") from None
    if preprocessing.METADATA_KEY not in meta or MODEL_KEY not in meta:
        raise DataError(f"model file {path} carries no preprocessing (metadata {preprocessing.METADATA_KEY!r} and "
                        f"{MODEL_KEY!r}): it cannot say how raw rows become its inputs; use the model file the "
                        "platform released", public="the model file carries no preprocessing")
    try:
        doc = preprocessing.check(json.loads(meta[preprocessing.METADATA_KEY]))
        spec = json.loads(meta[MODEL_KEY])
        model = build_model(spec, len(doc["columns"]))
        model.load_state_dict(state)
    except (ValueError, TypeError, KeyError, RuntimeError, SpecError) as e:
        raise DataError(f"model file {path}: its metadata or weights are invalid ({e})"[:1000],
                        public="the model file's metadata or weights are invalid") from None
    local = [f["name"] for f in doc["features"] if f["scaling"] == "local"]
    if local:
        raise DataError(f"the model standardised feature(s) {', '.join(local)} with each hospital's own statistics "
                        "(a schema without a range or fixed constants), so new rows cannot be prepared as training "
                        "saw them; retrain with a 'range' (federated statistics) or fixed center/scale",
                        public="the model uses local standardisation")
    model.eval()
    return model, doc


def scores(model, doc: dict[str, Any], X_codes: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(output column names, values [n, k]) for feature codes: binary -> probability, multi-class ->
    per-class probabilities, survival -> risk score (log relative hazard), regression -> prediction."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(encode(doc, X_codes))).double().numpy()
    out = out.reshape(len(X_codes), -1)
    task = doc["task"]
    if task == "binary_classification":
        return ["probability"], 1.0 / (1.0 + np.exp(-out[:, :1]))
    if task == "multiclass_classification":
        classes = label_classes({"task": task, "label": doc["label"]}) or []
        if out.shape[1] != len(classes):
            raise DataError(f"the model has {out.shape[1]} outputs but the label has {len(classes)} classes",
                            public="the model's outputs do not match its classes")
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return [f"p_{c}" for c in classes], e / e.sum(axis=1, keepdims=True)
    if task == "survival":
        return ["risk_score"], out[:, :1]
    return ["prediction"], out[:, :1]


def predict(model_path: str | Path, csv_path: str | Path, out: TextIO) -> int:
    """Score every row of ``csv_path`` (label columns not needed); write a CSV to ``out``; rows."""
    model, doc = read_model(model_path)
    X, _ = load_csv(csv_path, preprocessing.schema_of(doc), labels=False)
    names, values = scores(model, doc, X)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(names)
    for row in values:
        w.writerow([f"{v:.6g}" for v in row])
    return len(values)


def check(schema: dict[str, Any], csv_path: str | Path) -> str:
    """Check a data file against a study's schema; a report for the data manager (DataError if bad)."""
    schema = validate_schema(schema)
    X, y = load_csv(csv_path, schema)
    buf = io.StringIO()
    buf.write(f"{csv_path}: {len(X)} rows match the schema ({schema['task']}, {len(encoded_columns(schema))} model "
              f"inputs)\n")
    for j, f in enumerate(schema["features"]):
        rate = float(np.isnan(X[:, j]).mean())
        if rate:
            buf.write(f"  {f['name']}: {100 * rate:.1f}% missing, imputed ({f['missing']})\n")
    if schema["task"] in ("binary_classification", "multiclass_classification"):
        classes = label_classes(schema) or ["0", "1"]
        counts = np.bincount(y.astype(np.int64), minlength=len(classes))
        buf.write("  label: " + ", ".join(f"{c}: {n}" for c, n in zip(classes, counts)) + "\n")
    elif schema["task"] == "survival":
        buf.write(f"  events: {int(y[:, 1].sum())} of {len(y)} (censored: {int(len(y) - y[:, 1].sum())})\n")
    return buf.getvalue()


def schema_from_args(args) -> dict[str, Any]:
    """The schema a ``check`` run uses: --schema FILE, or --study ID as this node's ledger knows it."""
    if args.schema:
        try:
            return validate_schema(json.loads(Path(args.schema).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read schema {args.schema}: {e}", public="bad schema file") from None
    from .config import load_config
    from .ledger import Ledger

    cfg = load_config(args.config)
    study = Ledger(cfg.ledger).study_config(int(args.study)) if cfg.ledger.exists() else None
    if study is None:
        raise DataError(f"study {args.study} is unknown to this node (no invitation seen yet): pass --schema FILE "
                        "with the schema from the study page", public="unknown study")
    return dict(study.schema)



def study_dataset(cfg, study_id: int) -> str:
    """The data set a study this node was invited to names for this hospital (fedproto.datasets)."""
    from fedproto.datasets import dataset_for

    from .credentials import load_credentials
    from .ledger import Ledger

    study = Ledger(cfg.ledger).study_config(int(study_id)) if cfg.ledger.exists() else None
    if study is None:
        raise DataError(f"study {study_id} is unknown to this node (no invitation seen yet): pass --dataset NAME",
                        public="unknown study")
    hospital_id = load_credentials(cfg.credentials_file).hospital_id if cfg.credentials_file.exists() else None
    return dataset_for(study.datasets, hospital_id)
