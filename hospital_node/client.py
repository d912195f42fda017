"""HTTP client of the platform's node API (/api/node/). Outbound HTTPS only.

401, and 403 but for a study-scoped refusal -> FatalAuthError (stop, do not retry); network errors and 5xx -> TransientError
(retry with backoff); other 4xx -> ApiError carrying the platform's {"error", "code"}; a 409 where the
caller allows it -> Conflict (the platform's code says whether it was already done or discarded).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass
from json import dumps as json_dumps  # `json` is a parameter name in request()
from typing import Any, Iterable

import requests

from . import NODE_VERSION
from .errors import ApiError, FatalAuthError, TransientError

log = logging.getLogger("hospital_node.client")


# 403 codes that refuse one action in one study, not the node's credentials.
STUDY_SCOPED_REFUSALS = frozenset({"not_approved", "not_contributor", "not_custodian", "not_survivor", "forbidden"})


@dataclass(frozen=True)
class Conflict:
    """A 409 answer the caller allowed (``ok_409``): the platform's error code and message."""

    code: str
    message: str


class PlatformClient:
    def __init__(self, base_url: str, token: str | None, timeout_s: float = 30.0):
        self.base = base_url.rstrip("/") + "/api/node/"
        self.timeout = float(timeout_s)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"hospital-node/{NODE_VERSION}"
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    # ------------------------------------------------------------------ core

    def request(self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
                params: dict | None = None, timeout: float | None = None, ok_409: bool = False,
                raw: bool = False, headers: dict | None = None) -> Any:
        url = self.base + path.lstrip("/")
        headers = {**({"Content-Type": "application/octet-stream"} if data is not None else {}), **(headers or {})}
        t0 = time.monotonic()
        try:
            resp = self.session.request(method, url, json=json, data=data, params=params, headers=headers,
                                        timeout=timeout or self.timeout)
        except requests.RequestException as e:
            raise TransientError(f"{method} {path}: platform unreachable ({type(e).__name__}: {e})") from None
        log.debug("%s %s -> %s in %.1f ms (%d bytes back)", method, path, resp.status_code,
                  (time.monotonic() - t0) * 1000, len(resp.content))
        if resp.status_code >= 400 and data is not None:
            # The platform may answer before it has read the body: what is left of it would be read as
            # the next request on this keep-alive connection. Drop the connections; the next request
            # opens a fresh one.
            self.session.close()
        if resp.status_code in (401, 403):
            code, msg = _error_body(resp)
            if resp.status_code == 403 and code in STUDY_SCOPED_REFUSALS:
                # The token is fine; this hospital may not do this in this study (e.g. it was excluded
                # or withdrawn). The other studies go on: an ApiError, not a reason to stop the node.
                raise ApiError(resp.status_code, code, msg, method, path)
            raise FatalAuthError(f"{method} {path} -> {resp.status_code} {code}: {msg}")
        if resp.status_code >= 500 or resp.status_code == 429:
            code, msg = _error_body(resp)
            raise TransientError(f"{method} {path} -> {resp.status_code} {code}: {msg}")
        if resp.status_code == 409 and ok_409:
            code, msg = _error_body(resp)
            log.info("%s %s -> 409 %s (%s)", method, path, code, msg)
            return Conflict(code, msg)
        if resp.status_code >= 400:
            code, msg = _error_body(resp)
            raise ApiError(resp.status_code, code, msg, method, path)
        if raw:
            return resp
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise TransientError(f"{method} {path} -> {resp.status_code} with a non-JSON body") from None

    # ------------------------------------------------------------------ endpoints

    def enrol(self, enrolment_token: str, public_key_b64: str) -> dict:
        return self.request("POST", "enrol", json={"enrolment_token": enrolment_token,
                                                   "public_key": public_key_b64, "node_version": NODE_VERSION})

    def heartbeat(self, status: dict) -> dict:
        return self.request("POST", "heartbeat", json={"node_version": NODE_VERSION, "status": status})

    def work(self, wait: int, skip: Iterable[str] = ()) -> list[dict]:
        """Long-poll for work; `skip` names item keys this node cannot act on yet."""
        params: dict[str, int | str] = {"wait": int(wait)}
        skip = sorted(skip)
        if skip:
            params["skip"] = ",".join(skip)
        body = self.request("GET", "work", params=params, timeout=self.timeout + wait)
        items = (body or {}).get("items", [])
        if not isinstance(items, list):
            raise TransientError("GET work returned a body without an 'items' list")
        return items

    def decision(self, study_id: int, decision: str, reason: str) -> Any:
        return self.request("POST", f"studies/{study_id}/decision", json={"decision": decision, "reason": reason},
                            ok_409=True)

    def post_context(self, study_id: int, codec: str, public_params: bytes) -> Any:
        return self.request("POST", f"studies/{study_id}/context", ok_409=True,
                            json={"codec": codec, "public_params": base64.b64encode(public_params).decode()})

    def get_context(self, study_id: int) -> dict:
        return self.request("GET", f"studies/{study_id}/context")

    def post_sealed_keys(self, study_id: int, keys: list[dict]) -> Any:
        return self.request("POST", f"studies/{study_id}/sealed-keys", json={"keys": keys}, ok_409=True)

    def get_sealed_key(self, study_id: int) -> dict:
        return self.request("GET", f"studies/{study_id}/sealed-key")

    def key_ack(self, study_id: int, public_params_sha256: str) -> Any:
        return self.request("POST", f"studies/{study_id}/key-ack", ok_409=True,
                            json={"public_params_sha256": public_params_sha256})

    def refuse(self, job_id: int, code: str, reason: str) -> Any:
        return self.request("POST", f"jobs/{job_id}/refuse", json={"reason": reason, "code": code}, ok_409=True)

    def privacy_spend(self, job_id: int, spend: dict) -> Any:
        return self.request("POST", f"jobs/{job_id}/privacy-spend", json=spend, ok_409=True)

    def upload_update(self, job_id: int, frame: bytes, spend: dict | None = None) -> Any:
        """PUT the encrypted update; ``spend`` (the job's privacy spend) travels in the
        X-Privacy-Spend header and the platform records it before it takes the update."""
        extra = {"X-Privacy-Spend": json_dumps(spend, separators=(",", ":"))} if spend is not None else None
        return self.request("PUT", f"jobs/{job_id}/update", data=frame, ok_409=True,
                            timeout=max(self.timeout, 120.0), headers=extra)

    def get_aggregate(self, study_id: int, round_no: int) -> tuple[bytes, int | None]:
        resp = self.request("GET", f"studies/{study_id}/rounds/{round_no}/aggregate", raw=True,
                            timeout=max(self.timeout, 120.0))
        contrib = resp.headers.get("X-Contributors")
        return resp.content, (int(contrib) if contrib and contrib.isdigit() else None)

    def round_uploads(self, study_id: int, round_no: int) -> list[dict]:
        body = self.request("GET", f"studies/{study_id}/rounds/{round_no}/uploads")
        uploads = body.get("uploads") if isinstance(body, dict) else None
        if not isinstance(uploads, list):
            raise TransientError("GET round uploads returned a body without an 'uploads' list")
        return uploads

    def get_round_upload(self, study_id: int, round_no: int, job_id: int) -> bytes:
        return self.request("GET", f"studies/{study_id}/rounds/{round_no}/uploads/{job_id}", raw=True,
                            timeout=max(self.timeout, 120.0)).content

    def poison_report(self, study_id: int, round_no: int, body: dict) -> dict:
        out = self.request("POST", f"studies/{study_id}/rounds/{round_no}/poison-report", json=body)
        return out if isinstance(out, dict) else {}

    def secagg(self, method: str, study_id: int, round_no: int, stage: str, message: dict | None = None) -> Any:
        """A stage of a distributed round's secure aggregation (JSON; a stage not ready yet is a
        Conflict with code not_ready: ask again)."""
        return self.request(method, f"studies/{study_id}/rounds/{round_no}/secagg/{stage}",
                            json=None if message is None else {"message": message}, ok_409=True)

    def secagg_correction(self, study_id: int, round_no: int) -> tuple[bytes, list[int]]:
        resp = self.request("GET", f"studies/{study_id}/rounds/{round_no}/secagg/correction", raw=True)
        data = resp.content
        if hashlib.sha256(data).hexdigest() != resp.headers.get("X-Correction-SHA256"):
            raise TransientError(f"study {study_id} round {round_no}: the correction does not match its SHA-256")
        survivors = [int(x) for x in resp.headers.get("X-Survivors", "").split(",") if x.strip().isdigit()]
        return data, survivors

    def report(self, study_id: int, round_no: int, body: dict) -> Any:
        return self.request("POST", f"studies/{study_id}/rounds/{round_no}/report", json=body, ok_409=True)

    def upload_final_model(self, study_id: int, data: bytes) -> Any:
        # No ok_409: a 409 here is never "already done" (the same model again answers 201) but a
        # release the platform holds back (attestation_mismatch, not_ready, already_released).
        return self.request("PUT", f"studies/{study_id}/final-model", data=data,
                            timeout=max(self.timeout, 120.0))


def _error_body(resp: requests.Response) -> tuple[str, str]:
    try:
        body = resp.json()
        if isinstance(body, dict):
            return str(body.get("code", "error")), str(body.get("error", body.get("detail", "")))[:500]
    except ValueError:
        pass
    return "error", (resp.text or resp.reason or "")[:200].replace("\n", " ")
