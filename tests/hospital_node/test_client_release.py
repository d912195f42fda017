"""The node's client does not read a held-back release (409) as success (a real HTTP server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hospital_node.client import PlatformClient
from hospital_node.errors import ApiError


class _Platform(BaseHTTPRequestHandler):
    def do_PUT(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"error": "hospitals attested different final models", "code": "attestation_mismatch"}).encode()
        self.send_response(409)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def platform_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Platform)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_409_on_the_final_model_is_an_error_not_success(platform_url):
    client = PlatformClient(platform_url, "token")
    with pytest.raises(ApiError) as exc:
        client.upload_final_model(7, b"model bytes")
    assert exc.value.status == 409 and exc.value.code == "attestation_mismatch"
