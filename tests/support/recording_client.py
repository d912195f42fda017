"""A stand-in for the node's PlatformClient that records every call (the HTTP path itself is
covered by tests against a real HTTP server and by the integration tests)."""

from __future__ import annotations


class RecordingClient:
    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, *args))
            return {}
        return call

    def upload_update(self, job_id, frame, spend=None):
        # like the platform: a spend sent with the upload is recorded first and confirmed
        self.calls.append(("upload_update", job_id, frame, spend))
        return {"job_id": job_id, "privacy_spend_recorded": spend is not None}

    def named(self, name):
        return [c for c in self.calls if c[0] == name]
