"""A 403 that refuses one action in one study (an excluded or withdrawn hospital) is an ApiError for
that study; only a refused credential (401, or a 403 without a study-scoped code) stops the node.
A real HTTP server answers each."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hospital_node.client import PlatformClient
from hospital_node.errors import ApiError, FatalAuthError

ANSWERS = {  # path -> (status, code)
    "/api/node/studies/1/rounds/1/aggregate": (403, "not_approved"),
    "/api/node/studies/2/rounds/1/aggregate": (403, "permission_denied"),
    "/api/node/studies/3/rounds/1/aggregate": (401, "authentication_failed"),
}


class _Platform(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        status, code = ANSWERS[self.path]
        body = json.dumps({"error": f"refused ({code})", "code": code}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def client():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Platform)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield PlatformClient(f"http://127.0.0.1:{server.server_address[1]}", "token")
    server.shutdown()
    server.server_close()


def test_a_study_scoped_403_is_an_api_error_for_that_study(client):
    with pytest.raises(ApiError) as exc:
        client.request("GET", "studies/1/rounds/1/aggregate")
    assert exc.value.status == 403 and exc.value.code == "not_approved"
    assert not isinstance(exc.value, FatalAuthError)


@pytest.mark.parametrize("study", [2, 3])
def test_a_refused_credential_stops_the_node(client, study):
    with pytest.raises(FatalAuthError):
        client.request("GET", f"studies/{study}/rounds/1/aggregate")
