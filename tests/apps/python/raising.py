"""An app whose endpoint raises on request ({"fail": true}), for
tests/test_python_apps.py: the call must end 500 and the next must work."""

import os

import kiln


class Raising(kiln.App, keep_alive=60, max_concurrency=1):
    machine_type = "CPU"

    @kiln.endpoint("/")
    def run(self, request: dict) -> dict:
        if request.get("fail"):
            raise ValueError("asked to fail")
        if request.get("exit"):
            os._exit(7)                 # the process dies mid-request
        return {"ok": True, "pid": os.getpid()}
