"""Node credentials: the platform token and the node's X25519 keypair (PyNaCl).

Stored as JSON, mode 0600, written atomically. Never printed or logged.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey, PublicKey, SealedBox

from .errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    hospital_id: int
    hospital_name: str
    node_token: str
    private_key: bytes  # raw 32 bytes
    platform_url: str

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(bytes(PrivateKey(self.private_key).public_key)).decode()

    def __repr__(self) -> str:  # never leak secrets into logs or tracebacks
        return f"Credentials(hospital_id={self.hospital_id}, hospital_name={self.hospital_name!r})"


def new_keypair() -> PrivateKey:
    return PrivateKey.generate()


def seal_for(public_key_b64: str, data: bytes) -> str:
    """SealedBox(recipient public key) over ``data``, base64."""
    pk = PublicKey(base64.b64decode(public_key_b64, validate=True))
    return base64.b64encode(SealedBox(pk).encrypt(data)).decode()


def open_sealed(private_key: bytes, sealed_b64: str) -> bytes:
    return SealedBox(PrivateKey(private_key)).decrypt(base64.b64decode(sealed_b64, validate=True))


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (tmp + fsync + rename + fsync dir) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_credentials(path: Path, creds: Credentials) -> None:
    body = {"hospital_id": creds.hospital_id, "hospital_name": creds.hospital_name,
            "node_token": creds.node_token, "platform_url": creds.platform_url,
            "private_key": base64.b64encode(creds.private_key).decode(),
            "public_key": creds.public_key_b64}
    write_atomic(path, json.dumps(body, indent=2).encode(), 0o600)


def load_credentials(path: Path) -> Credentials:
    if not path.is_file():
        raise ConfigError(f"no credentials at {path}: enrol this node first with "
                          f"`python -m hospital_node enrol --config <node.toml> --token <enrolment token>`")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"credentials file {path} is readable by other users: run `chmod 600 {path}`")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return Credentials(hospital_id=int(body["hospital_id"]), hospital_name=str(body.get("hospital_name", "")),
                           node_token=str(body["node_token"]),
                           private_key=base64.b64decode(body["private_key"], validate=True),
                           platform_url=str(body.get("platform_url", "")))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"credentials file {path} is damaged ({type(e).__name__}): re-enrol with --force "
                          f"using a new enrolment token") from None
