"""Node configuration (TOML). Errors name the key and say what to put there."""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedproto.datasets import DATASET_NAME, DEFAULT_DATASET
from fedproto.specs import MODEL_TYPES

from .errors import ConfigError

# DP-SGD engines (kept here so reading a config never imports torch): "fused" is Opacus' DPOptimizer
# step computed in a few matrix products for the registry's models (hospital_node/dp_fused.py, checked
# against Opacus at start-up); the others are Opacus' own per-sample gradient engines
GRAD_SAMPLE_MODES = ("fused", "ew", "hooks", "functorch", "ghost")


@dataclass(frozen=True)
class Limits:
    max_epsilon: float = 1.0
    max_delta: float = 1e-5
    allowed_models: tuple[str, ...] = tuple(MODEL_TYPES)
    auto_approve: bool = False
    max_rounds: int = 100


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    platform_url: str
    credentials_file: Path
    request_timeout_s: float
    data_csv: Path
    ledger: Path
    work_dir: Path
    poll_wait_s: int
    grad_sample_mode: str
    heartbeat_interval_s: float
    limits: Limits = field(default_factory=Limits)
    # The node's data sets by name ([datasets.NAME] path = ...); [data] csv is the data set "default".
    datasets: dict[str, Path] = field(default_factory=dict)

    def dataset_path(self, name: str | None = None) -> Path:
        """The file of data set ``name`` (None: the default data set)."""
        key = name or DEFAULT_DATASET
        if key not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise ConfigError(f"the node has no data set {key!r} (known: {known}): add [datasets.{key}] path = "
                              f"\"...\" to {self.path}")
        return self.datasets[key]


_DATASET_NAME = DATASET_NAME  # the one rule for data set names, shared with the studies that name them

_KNOWN = {
    "platform": {"url", "credentials_file", "request_timeout_s"},
    "data": {"csv"},
    "node": {"ledger", "work_dir", "poll_wait_s", "grad_sample_mode", "heartbeat_interval_s"},
    "limits": {"max_epsilon", "max_delta", "allowed_models", "auto_approve", "max_rounds"},
}


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: copy deploy/node.example.toml there and edit it") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    base = path.resolve().parent

    for section, val in raw.items():
        if section == "datasets":
            continue  # checked below
        if section not in _KNOWN:
            raise ConfigError(f"unknown section [{section}] in {path}; known sections: "
                              f"{', '.join('[' + s + ']' for s in _KNOWN)}, [datasets.NAME]")
        if not isinstance(val, dict):
            raise ConfigError(f"{section} must be a [{section}] table in {path}")
        extra = set(val) - _KNOWN[section]
        if extra:
            raise ConfigError(f"unknown key(s) {', '.join(sorted(section + '.' + k for k in extra))} in {path}; "
                              f"[{section}] takes {', '.join(sorted(_KNOWN[section]))}")

    def get(section: str, key: str, default: Any = ...) -> Any:
        val = raw.get(section, {}).get(key, default)
        if val is ...:
            raise ConfigError(f"missing {section}.{key} in {path}: add it under [{section}]")
        return val

    def path_of(section: str, key: str, default: Any = ...) -> Path:
        v = get(section, key, default)
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{section}.{key} must be a file path (a string), got {v!r}")
        p = Path(v).expanduser()
        return p if p.is_absolute() else base / p

    def number(section: str, key: str, default: Any, lo: float, hi: float, integer: bool = False) -> float:
        v = get(section, key, default)
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or not math.isfinite(v) or not lo <= v <= hi:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"{section}.{key} must be {kind} between {lo:g} and {hi:g}, got {v!r}")
        return v

    datasets = _datasets(raw, path, path_of)
    url = get("platform", "url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ConfigError(f"platform.url must be the platform's base URL, like \"https://fl.example.org\", got {url!r}")

    gsm = get("node", "grad_sample_mode", "fused")
    if gsm not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"node.grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {gsm!r}")

    allowed = get("limits", "allowed_models", list(MODEL_TYPES))
    if not isinstance(allowed, list) or not all(isinstance(m, str) for m in allowed):
        raise ConfigError(f"limits.allowed_models must be a list of model types, e.g. [\"logistic_regression\"], got {allowed!r}")
    unknown = [m for m in allowed if m not in MODEL_TYPES]
    if unknown:
        raise ConfigError(f"limits.allowed_models has unknown model type(s) {unknown}; known: {', '.join(MODEL_TYPES)}")
    auto = get("limits", "auto_approve", False)
    if not isinstance(auto, bool):
        raise ConfigError(f"limits.auto_approve must be true or false, got {auto!r}")

    limits = Limits(max_epsilon=float(number("limits", "max_epsilon", 1.0, 1e-6, 100.0)),
                    max_delta=float(number("limits", "max_delta", 1e-5, 1e-12, 0.1)),
                    allowed_models=tuple(allowed), auto_approve=auto,
                    max_rounds=int(number("limits", "max_rounds", 100, 1, 100_000, integer=True)))
    return NodeConfig(
        path=path, platform_url=url.rstrip("/"),
        credentials_file=path_of("platform", "credentials_file", "node-credentials.json"),
        request_timeout_s=float(number("platform", "request_timeout_s", 30, 1, 600)),
        data_csv=datasets[DEFAULT_DATASET] if DEFAULT_DATASET in datasets else next(iter(datasets.values())),
        ledger=path_of("node", "ledger", "ledger.sqlite3"),
        work_dir=path_of("node", "work_dir", "work"),
        poll_wait_s=int(number("node", "poll_wait_s", 20, 0, 30, integer=True)),
        grad_sample_mode=gsm,
        heartbeat_interval_s=float(number("node", "heartbeat_interval_s", 60, 1, 3600)),
        limits=limits, datasets=datasets,
    )


def _datasets(raw: dict[str, Any], path: Path, path_of) -> dict[str, Path]:
    """[datasets.NAME] path = ... tables, plus [data] csv as the data set "default" (the single-file
    configuration of earlier nodes, still supported)."""
    tables = raw.get("datasets", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"datasets must be tables like [datasets.cohort2024] with path = \"...\" in {path}")
    out: dict[str, Path] = {}
    if "csv" in raw.get("data", {}):
        out[DEFAULT_DATASET] = path_of("data", "csv")
    for name, table in tables.items():
        if not _DATASET_NAME.match(name):
            raise ConfigError(f"data set name {name!r} in {path}: use letters, digits, _ . - (at most 64)")
        if not isinstance(table, dict) or set(table) != {"path"}:
            raise ConfigError(f"[datasets.{name}] in {path} takes exactly one key, path = \"...\"")
        if name in out:
            raise ConfigError(f"data set {name!r} is given twice in {path} ([data] csv is the data set "
                              f"{DEFAULT_DATASET!r}); keep one")
        v = table["path"]
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"datasets.{name}.path must be a file path (a string), got {v!r}")
        p = Path(v).expanduser()
        out[name] = p if p.is_absolute() else path.resolve().parent / p
    if not out:
        raise ConfigError(f"missing data.csv in {path}: name the data file under [data] (csv = \"...\") or the "
                          f"node's data sets as [datasets.NAME] path = \"...\"")
    return out


def plain_http_warning(url: str) -> str | None:
    """A warning when ``url`` is plain http:// to a host other than this machine, else None.

    Over plain HTTP the node token (and every upload's metadata) crosses the network readable and
    forgeable by anyone on the path; only a loopback address is safe without TLS (the local stack)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return None
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"platform.url {url} is plain http:// to {host or 'an unnamed host'}: the node token and the "
            f"protocol traffic cross the network unencrypted; use the platform's https:// URL")
