"""An app whose setup() raises: its calls end with a 5xx, not a hang."""

import kiln


class BadSetup(kiln.App, keep_alive=60, max_concurrency=1):
    machine_type = "CPU"

    def setup(self):
        raise RuntimeError("the model weights are missing")

    @kiln.endpoint("/")
    def run(self) -> dict:
        return {"never": True}
