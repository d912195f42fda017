"""The study definition both sides agree on: its bounds, its validation, its wire form.

``validate_study`` is the one place a study's bounds are checked: the platform validates what a
researcher defines with it, and a node parses the study of a work item with
``StudyConfig.from_wire`` (which calls it). A hospital's own, stricter limits are the node's
business (hospital_node/planning.py).

A ``StudyConfig`` is frozen; ``schema``, ``model`` and ``encryption`` are validated dicts that
belong to the config: read them, never change them (``to_wire`` hands out copies).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Any, Mapping

from . import PROTOCOL_VERSION
from .codec import DEFAULT_CODEC, get_codec
from .datasets import DEFAULT_DATASETS, validate_datasets
from .ddp_config import check_distributed, packing
from .errors import SpecError
from .evaluation import DEFAULT_EVALUATION, validate_evaluation
from .privacy import DEFAULT_ACCOUNTANT, DEFAULT_MODE, FULL_BATCH, validate_privacy
from .schema import n_inputs, needs_statistics, validate_schema
from .specs import n_params as spec_n_params
from .specs import validate_model_spec

# Bounds of a study definition (the platform's API, portal and demo command, the nodes, the benchmarks).
MAX_NAME_LENGTH = 200
MAX_ROUNDS = 1000
MAX_LOCAL_EPOCHS = 100
MAX_BATCH_SIZE = 100_000
MAX_LEARNING_RATE = 10.0  # learning_rate is in (0, MAX_LEARNING_RATE]
MIN_ROUND_DEADLINE_S = 5
MAX_ROUND_DEADLINE_S = 7 * 24 * 3600
MIN_QUORUM = 1  # and at most the number of invited hospitals, which at most encryption.max_hospitals
MIN_SEED, MAX_SEED = -(2 ** 63), 2 ** 63 - 1  # a 64-bit signed integer (what the platform stores)
_MAX_ID = 2 ** 63 - 1
SEED_DRAW_BOUND = 2 ** 31  # a study defined without a seed gets one drawn from [0, 2^31)


class WorkKind:
    """The kinds of work item a node receives from ``GET work`` (docs/PROTOCOL.md)."""

    INVITATION = "invitation"
    PUBLISH_CONTEXT = "publish_context"
    SEAL_KEYS = "seal_keys"
    FETCH_KEY = "fetch_key"
    TRAIN = "train"
    EVALUATE = "evaluate"
    UPLOAD_FINAL_MODEL = "upload_final_model"
    ALL = (INVITATION, PUBLISH_CONTEXT, SEAL_KEYS, FETCH_KEY, TRAIN, EVALUATE, UPLOAD_FINAL_MODEL)


# The study dict a node receives in a work item, in the order the platform sends it.
WIRE_FIELDS = ("id", "name", "consortium", "protocol_version", "schema", "model", "rounds", "local_epochs",
               "batch_size", "learning_rate", "privacy", "encryption", "quorum", "round_deadline_s", "seed",
               "custodian_hospital_id", "n_params", "evaluation", "datasets")

# Fields a study dict may lack (a platform older than them): they take their defaults.
OPTIONAL_WIRE_FIELDS = ("evaluation", "datasets")


@dataclass(frozen=True)
class Privacy:
    """Differential privacy of a study: the budget (epsilon, delta) per hospital over the whole
    study, the per-sample gradient clipping bound and the accountant."""

    epsilon: float
    delta: float
    clip_norm: float
    accountant: str = DEFAULT_ACCOUNTANT
    mode: str = DEFAULT_MODE  # "local" or "distributed" (fedproto/privacy.py)
    collusion: int = 0  # T, distributed mode only
    quant_step: float = 0.0  # gamma, distributed mode only

    @classmethod
    def parse(cls, raw: Any) -> Privacy:
        p = validate_privacy(raw)
        return cls(epsilon=p["epsilon"], delta=p["delta"], clip_norm=p["clip_norm"], accountant=p["accountant"],
                   mode=p.get("mode", DEFAULT_MODE), collusion=p.get("collusion", 0), quant_step=p.get("quant_step", 0.0))

    @property
    def distributed(self) -> bool:
        return self.mode == "distributed"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epsilon": self.epsilon, "delta": self.delta, "clip_norm": self.clip_norm,
                               "accountant": self.accountant}
        if self.distributed:  # a local-mode study's wire form is unchanged
            out.update(mode=self.mode, collusion=self.collusion, quant_step=self.quant_step)
        return out


@dataclass(frozen=True)
class StudyConfig:
    """A validated study. Build it with ``validate_study`` or ``StudyConfig.from_wire``."""

    name: str
    schema: dict[str, Any]
    model: dict[str, Any]
    rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    privacy: Privacy
    encryption: dict[str, Any]
    quorum: int
    round_deadline_s: int
    seed: int
    n_params: int
    # how each hospital judges the model: its held-out share and the local-only baseline (fedproto.evaluation)
    evaluation: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_EVALUATION))
    # which data set of each hospital's node the study uses (fedproto.datasets): {"default": NAME, "hospitals": {...}}
    datasets: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_DATASETS))
    consortium: str = ""
    id: int | None = None  # the platform's id; None until the platform has stored the study
    custodian_hospital_id: int | None = None
    protocol_version: int = PROTOCOL_VERSION

    @classmethod
    def from_wire(cls, d: Any) -> StudyConfig:
        """Parse and validate the study dict of a work item (every field of WIRE_FIELDS but those of
        OPTIONAL_WIRE_FIELDS, which take their defaults; no other)."""
        if not isinstance(d, Mapping):
            raise SpecError(f"a study must be a JSON object with the fields {', '.join(WIRE_FIELDS)}, "
                            f"got {type(d).__name__}")
        missing = [k for k in WIRE_FIELDS if k not in d and k not in OPTIONAL_WIRE_FIELDS]
        if missing:
            raise SpecError(f"study is missing field(s) {missing}; the platform sends {', '.join(WIRE_FIELDS)}")
        return _validate(d, n_hospitals=None, wire=True)

    def to_wire(self) -> dict[str, Any]:
        """The study dict as the platform sends it (a fresh copy: changing it changes nothing here)."""
        return {
            "id": self.id, "name": self.name, "consortium": self.consortium,
            "protocol_version": self.protocol_version, "schema": copy.deepcopy(self.schema),
            "model": copy.deepcopy(self.model), "rounds": self.rounds, "local_epochs": self.local_epochs,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate, "privacy": self.privacy.to_dict(),
            "encryption": copy.deepcopy(self.encryption), "quorum": self.quorum,
            "round_deadline_s": self.round_deadline_s, "seed": self.seed,
            "custodian_hospital_id": self.custodian_hospital_id, "n_params": self.n_params,
            "evaluation": copy.deepcopy(self.evaluation), "datasets": copy.deepcopy(self.datasets),
        }

    @property
    def study_id(self) -> int:
        """The platform's id (a study read from the wire always has one)."""
        if self.id is None:
            raise SpecError(f"study {self.name!r} has no id yet: the platform assigns it when it stores the study")
        return self.id

    @property
    def task(self) -> str:
        return str(self.schema["task"])

    @property
    def n_features(self) -> int:
        """The model's number of inputs: the width of the encoded features (a categorical feature
        is one input per category, a missing-value indicator one more; fedproto.schema)."""
        return n_inputs(self.schema)

    @property
    def full_batch(self) -> bool:
        """batch_size 0: every DP-SGD step uses all of the hospital's training rows (sampling rate 1)."""
        return self.batch_size == FULL_BATCH

    def local_batch(self, n_train: int) -> int:
        """The batch a hospital with ``n_train`` training rows uses."""
        return int(n_train) if self.full_batch else self.batch_size

    @property
    def codec(self) -> str:
        """Name of the encryption codec (validated: always present)."""
        return str(self.encryption["codec"])


def _int_in(name: str, value: Any, lo: int, hi: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{name} must be an integer between {lo} and {hi}{hint}, got {value!r}")
    return value


def _float_in(name: str, value: Any, lo: float, hi: float) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not lo < float(value) <= hi):
        raise SpecError(f"{name} must be a number in ({lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _encryption(enc: Any) -> dict[str, Any]:
    if not isinstance(enc, Mapping):
        raise SpecError(f'encryption must be an object such as {{"codec": "{DEFAULT_CODEC}"}}, got {enc!r}')
    codec = get_codec(enc.get("codec", DEFAULT_CODEC))
    return copy.deepcopy(codec.validate_config({**enc, "codec": codec.name}))


def validate_study(raw: Any, *, n_hospitals: int | None = None) -> StudyConfig:
    """Validate a study definition and return it as a StudyConfig; raise SpecError naming the field.

    ``raw`` holds the fields of WIRE_FIELDS (``model`` is the model spec, ``privacy`` an object);
    ``id`` and ``custodian_hospital_id`` may be absent before the platform stores the study,
    ``seed`` (drawn at random when absent), ``evaluation`` (default DEFAULT_EVALUATION), ``datasets``
    (default: every hospital's data set "default"), ``consortium``,
    ``protocol_version`` and ``n_params``
    (checked against the model when given) may be absent too. ``n_hospitals`` (the invited
    hospitals, when known) bounds the quorum and must fit the encryption's ``max_hospitals``."""
    return _validate(raw, n_hospitals=n_hospitals, wire=False)


def _validate(raw: Any, *, n_hospitals: int | None, wire: bool) -> StudyConfig:
    """validate_study; ``wire``: ``raw`` is a study the platform sent (id and seed required)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"a study must be a JSON object with the fields {', '.join(WIRE_FIELDS)}")
    extra = set(raw) - set(WIRE_FIELDS)
    if extra:
        raise SpecError(f"study has unknown field(s) {sorted(extra)}; a study has {', '.join(WIRE_FIELDS)}")
    version = raw.get("protocol_version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise SpecError(f"study protocol_version {version!r} is not supported: this software speaks protocol "
                        f"version {PROTOCOL_VERSION}; upgrade it")
    name = raw.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise SpecError(f"study name must be 1 to {MAX_NAME_LENGTH} characters, got {name!r}")
    consortium = raw.get("consortium", "")
    if not isinstance(consortium, str):
        raise SpecError(f"study consortium must be the consortium's name (a string), got {consortium!r}")

    schema = validate_schema(raw.get("schema"))
    model = validate_model_spec(raw.get("model"), schema["task"])
    privacy = Privacy.parse(raw.get("privacy"))
    enc = _encryption(raw.get("encryption"))
    max_hospitals = enc.get("max_hospitals")
    if n_hospitals is not None:
        if n_hospitals < 1:
            raise SpecError("invite at least one hospital")
        if max_hospitals is not None and n_hospitals > max_hospitals:
            raise SpecError(f"{n_hospitals} hospitals invited but the encryption is sized for at most "
                            f"{max_hospitals}; raise encryption.max_hospitals")
    quorum_max = n_hospitals if n_hospitals is not None else max_hospitals if max_hospitals is not None else _MAX_ID
    quorum_hint = (" (the number of invited hospitals)" if n_hospitals is not None
                   else " (encryption.max_hospitals)" if max_hospitals is not None else "")

    n_features = n_inputs(schema)
    expected_params = spec_n_params(model, n_features)
    given = raw.get("n_params", expected_params)
    if isinstance(given, bool) or not isinstance(given, int) or given != expected_params:
        raise SpecError(f"study n_params {raw.get('n_params')!r} does not match its model: model {model['type']} on "
                        f"{n_features} features has {expected_params} parameters")
    seed = raw.get("seed")
    seed = secrets.randbelow(SEED_DRAW_BOUND) if seed is None and not wire else seed
    study_id = raw.get("id")
    if study_id is not None or wire:
        study_id = _int_in("study id", study_id, 1, _MAX_ID)
    custodian = raw.get("custodian_hospital_id")
    if custodian is not None:
        custodian = _int_in("custodian_hospital_id", custodian, 1, _MAX_ID, " or null")

    quorum = _int_in("quorum", raw.get("quorum"), MIN_QUORUM, quorum_max, quorum_hint)
    if privacy.distributed and needs_statistics(schema):
        raise SpecError("distributed DP has no statistics round yet: give the numeric features fixed center/scale in "
                        "the schema, or opt out with \"statistics\": {\"federated\": false}")
    if privacy.distributed:
        check_distributed(privacy, quorum, n_hospitals, enc)
        if raw.get("batch_size") == FULL_BATCH:
            raise SpecError("distributed DP divides the summed gradients by batch_size, a public normaliser: full batch "
                            "(0) would need each hospital's record count, which this mode never sends; set batch_size "
                            ">= 1")
    cfg = StudyConfig(
        id=study_id, name=name, consortium=consortium, protocol_version=PROTOCOL_VERSION,
        schema=schema, model=model,
        rounds=_int_in("rounds", raw.get("rounds"), 1, MAX_ROUNDS),
        local_epochs=_int_in("local_epochs", raw.get("local_epochs"), 1, MAX_LOCAL_EPOCHS),
        batch_size=_int_in("batch_size", raw.get("batch_size"), FULL_BATCH, MAX_BATCH_SIZE,
                           " (0: all of each hospital's rows in every step)"),
        learning_rate=_float_in("learning_rate", raw.get("learning_rate"), 0.0, MAX_LEARNING_RATE),
        privacy=privacy, encryption=enc,
        quorum=quorum,
        round_deadline_s=_int_in("round_deadline_s", raw.get("round_deadline_s"), MIN_ROUND_DEADLINE_S,
                                 MAX_ROUND_DEADLINE_S, " seconds"),
        seed=_int_in("seed", seed, MIN_SEED, MAX_SEED), custodian_hospital_id=custodian,
        n_params=expected_params,
        evaluation=validate_evaluation(raw.get("evaluation", DEFAULT_EVALUATION)),
        datasets=validate_datasets(raw.get("datasets")),
    )
    if privacy.distributed and n_hospitals is not None:
        packing(cfg)  # the noise plan exists and its noise fits the codec's digits (SpecError otherwise)
    return cfg


__all__ = ["FULL_BATCH", "MAX_BATCH_SIZE", "MAX_LEARNING_RATE", "MAX_LOCAL_EPOCHS", "MAX_NAME_LENGTH",
           "MAX_ROUNDS", "MAX_ROUND_DEADLINE_S", "MAX_SEED", "MIN_QUORUM", "MIN_ROUND_DEADLINE_S", "MIN_SEED",
           "Privacy", "SEED_DRAW_BOUND", "StudyConfig", "WIRE_FIELDS", "WorkKind", "validate_study"]
