"""An app with requirements: its manifest lists them (nothing here installs them)."""

import kiln


class Needs(kiln.App, keep_alive=60, max_concurrency=1):
    machine_type = "CPU"
    requirements = ["some-package==1.0"]

    @kiln.endpoint("/")
    def run(self) -> dict:
        return {}
