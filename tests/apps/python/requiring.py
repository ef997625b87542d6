"""An app with a requirement only its virtual environment has: the local
package pkgs/kilntestpkg, by its absolute path (taken where `kiln deploy`
describes the app: this directory). Two runners from the start, so that
both want the environment at once."""

import os
import sys

import kiln

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pkgs", "kilntestpkg")


class Requiring(kiln.App, keep_alive=300, min_concurrency=2, max_concurrency=3):
    machine_type = "CPU"
    requirements = [PACKAGE]

    def setup(self):
        import kilntestpkg             # as fal apps do: requirements in setup()
        self.package = kilntestpkg

    @kiln.endpoint("/")
    def run(self, request: dict) -> dict:
        return {
            "fingerprint": self.package.fingerprint(request.get("text", "")),
            "module": self.package.__file__,
            "prefix": sys.prefix,
            "pid": os.getpid(),
        }
