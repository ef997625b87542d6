"""An app that says whether it holds a secret, for tests/test_secrets.py:
{"name": N, "sha256": H} answers whether the environment variable N is set
and whether the SHA-256 of its value is H. Never the value itself: the
test checks that the value appears nowhere kiln answers or logs."""

import hashlib
import os

import kiln


class Secretive(kiln.App, keep_alive=60, max_concurrency=1):
    machine_type = "CPU"

    @kiln.endpoint("/")
    def check(self, request: dict) -> dict:
        value = os.environ.get(request.get("name", ""))
        digest = hashlib.sha256(value.encode()).hexdigest() if value is not None else None
        return {"set": value is not None, "matches": digest == request.get("sha256"),
                "pid": os.getpid()}
