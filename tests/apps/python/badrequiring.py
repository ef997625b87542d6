"""An app whose requirement cannot be installed (pkgs/kilnbadpkg's build
raises): its setup fails with pip's message, and its calls end with a
5xx, not a hang."""

import os

import kiln

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pkgs", "kilnbadpkg")


class BadRequiring(kiln.App, keep_alive=60, max_concurrency=1):
    machine_type = "CPU"
    requirements = [PACKAGE]

    @kiln.endpoint("/")
    def run(self) -> dict:
        return {"never": True}
