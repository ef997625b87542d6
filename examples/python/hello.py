"""hello — a small kiln Python app, in the shape of a fal app

    kiln deploy examples/python/hello.py::Hello
    curl -X POST http://127.0.0.1:8080/local/hello -H 'Content-Type: application/json' -d '{"name": "kiln", "excited": true}'

    → {"greeting": "Hello, kiln!", "served": 1,
       "badge": {"url": ".../files/<id>", "content_type": "image/png",
                 "file_name": "badge.png", "file_size": 74, "width": 8, "height": 8}}

setup() makes the app's state once (here a greeting template and a count
standing in for a model); the endpoint uses it, takes and returns a
dataclass, logs a line into the request's logs, and stores a small PNG
(a square in a colour picked from the name) that kiln serves by URL.

A fal app becomes a kiln app by changing its import (`import kiln`,
`kiln.App`, `@kiln.endpoint`, `kiln.Image`) and using dataclasses where
it used pydantic models.
"""

import threading
import struct
import zlib
from dataclasses import dataclass

import kiln

BADGE_SIDE_PX = 8


@dataclass
class Input:
    name: str = "world"
    excited: bool = False


@dataclass
class Output:
    greeting: str
    served: int
    badge: kiln.Image


def _png(side: int, rgb: bytes) -> bytes:
    """A square PNG of one colour, with the standard library only."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = b"".join(b"\0" + rgb * side for _ in range(side))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


class Hello(kiln.App, keep_alive=300, max_concurrency=2, max_multiplexing=2):
    machine_type = "CPU"
    requirements = []

    def setup(self):
        #  Where a real app loads its model: once per runner, not per call.
        self.template = "Hello, {name}{mark}"
        self.served = 0
        self.lock = threading.Lock()    # max_multiplexing=2: two calls at once

    @kiln.endpoint("/")
    def greet(self, request: Input) -> Output:
        with self.lock:
            self.served += 1
            served = self.served
        greeting = self.template.format(name=request.name,
                                        mark="!" if request.excited else ".")
        self.log("greeting %s (call %d of this runner)" % (request.name, served))
        colour = zlib.crc32(request.name.encode()).to_bytes(4, "big")[:3]
        badge = kiln.Image.from_bytes(_png(BADGE_SIDE_PX, colour), format="png",
                                      file_name="badge.png")
        return Output(greeting=greeting, served=served, badge=badge)
