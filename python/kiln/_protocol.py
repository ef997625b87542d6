"""kiln._protocol — the frames of kiln's process-app protocol.

A process app and its runner talk over the app's standard input and
output in frames (docs/PROCESS_APPS.md is the whole protocol):

    u32 big-endian header length | header | u32 big-endian body length | body

The header is a UTF-8 JSON object with a string "type"; the body is raw
bytes, possibly none. A frame that breaks these rules, or a length over
HEADER_MAX_BYTES / BODY_MAX_BYTES, is a ProtocolError: the stream cannot
be trusted past it, so the reader gives up rather than resynchronise.

Standard library only; used by kiln.serve and by tests that play the
runner's part.
"""

from __future__ import annotations

import json
import struct
import threading
from typing import Any, BinaryIO, Dict, Optional, Tuple

PROTOCOL_VERSION = 1
HEADER_MAX_BYTES = 1 << 20          # 1 MiB
BODY_MAX_BYTES = 512 << 20          # 512 MiB, as kiln's wire allows for bodies

_LENGTH = struct.Struct(">I")

Header = Dict[str, Any]


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; a peer in another language would
    # choke on what we accepted.
    raise ValueError("%s is not valid JSON" % name)


def encode_header(header: Header) -> bytes:
    """The header's bytes: compact UTF-8 JSON. ValueError if it cannot be
    a header (no string "type", not JSON-able, over HEADER_MAX_BYTES)."""
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ValueError("a frame header must be a dict with a string 'type'")
    data = json.dumps(header, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")
    if len(data) > HEADER_MAX_BYTES:
        raise ValueError("frame header is %d bytes, over the %d limit"
                         % (len(data), HEADER_MAX_BYTES))
    return data


def encode(header: Header, body: bytes = b"") -> bytes:
    """One whole frame as bytes (for small frames and tests; FrameWriter
    writes big bodies without copying them)."""
    head = encode_header(header)
    body = bytes(body)
    if len(body) > BODY_MAX_BYTES:
        raise ValueError("frame body is %d bytes, over the %d limit"
                         % (len(body), BODY_MAX_BYTES))
    return _LENGTH.pack(len(head)) + head + _LENGTH.pack(len(body)) + body


def decode_header(data: bytes) -> Header:
    """Parses a header; ProtocolError when it is not a UTF-8 JSON object
    with a string "type"."""
    try:
        header = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError("frame header is not UTF-8 JSON: %s" % error) from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    if not isinstance(header.get("type"), str):
        raise ProtocolError("frame header has no string 'type'")
    return header


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    chunks = []
    left = size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            raise ProtocolError("end of stream inside a frame (reading its %s)" % what)
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO) -> Optional[Tuple[Header, bytes]]:
    """Reads one frame: (header, body), or None when the stream ends
    cleanly between frames. ProtocolError on anything else. The lengths
    are checked before anything is allocated for them."""
    first = stream.read(_LENGTH.size)
    if not first:
        return None
    if len(first) < _LENGTH.size:
        first += _read_exact(stream, _LENGTH.size - len(first), "header length")
    (header_size,) = _LENGTH.unpack(first)
    if header_size > HEADER_MAX_BYTES:
        raise ProtocolError("frame header length %d is over the %d limit"
                            % (header_size, HEADER_MAX_BYTES))
    header = decode_header(_read_exact(stream, header_size, "header"))
    (body_size,) = _LENGTH.unpack(_read_exact(stream, _LENGTH.size, "body length"))
    if body_size > BODY_MAX_BYTES:
        raise ProtocolError("frame body length %d is over the %d limit"
                            % (body_size, BODY_MAX_BYTES))
    body = _read_exact(stream, body_size, "body") if body_size else b""
    return header, body


class FrameWriter:
    """Writes whole frames to a binary stream, one thread at a time, so
    that frames from concurrent handlers never interleave."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, header: Header, body: bytes = b"") -> None:
        """Writes and flushes one frame. ValueError when the frame breaks
        the limits (nothing written); OSError when the stream is gone."""
        head = encode_header(header)
        if len(body) > BODY_MAX_BYTES:
            raise ValueError("frame body is %d bytes, over the %d limit"
                             % (len(body), BODY_MAX_BYTES))
        with self._lock:
            self._stream.write(_LENGTH.pack(len(head)) + head + _LENGTH.pack(len(body)))
            if body:
                self._stream.write(body)
            self._stream.flush()
