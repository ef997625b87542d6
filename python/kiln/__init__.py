"""kiln — the Python SDK for kiln apps, in the shape of fal's `fal.App`.

A kiln Python app is a class; kiln runs it in a process of its own
(`python3 -m kiln.serve app.py ClassName`, started by a runner), calls
setup() once, then its endpoints for the requests it is given, and
teardown() when the runner retires:

    from dataclasses import dataclass
    import kiln

    @dataclass
    class Input:
        prompt: str

    @dataclass
    class Output:
        image: kiln.Image

    class MyApp(kiln.App, keep_alive=300, max_concurrency=2):
        machine_type = "GPU-A100"
        requirements = ["diffusers==0.28.0", "torch==2.3.0"]

        def setup(self):
            import torch                    # heavy imports here, not at the top:
            self.pipe = ...                 # describe imports the file without them

        @kiln.endpoint("/")
        def run(self, request: Input) -> Output:
            self.log("drawing %s" % request.prompt)
            return Output(image=kiln.Image.from_pil(self.pipe(request.prompt)))

Deploy it with `kiln deploy app.py::MyApp`. A fal app runs with only its
import changed, using dataclasses or dicts where it used pydantic models
(pydantic models work too when pydantic is in `requirements`).

Standard library only. The protocol under it is docs/PROCESS_APPS.md.
"""

from __future__ import annotations

import contextvars
import io
import mimetypes
import re
import struct
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

__all__ = [
    "App", "endpoint", "File", "Image", "Response", "HTTPException",
    "log", "cancelled",
]

#  What the manifest takes when the class does not say (as kiln/app.h).
MANIFEST_DEFAULTS: Dict[str, int] = {
    "keep_alive": 300,
    "min_concurrency": 0,
    "max_concurrency": 2,
    "concurrency_buffer": 0,
    "max_multiplexing": 1,
    "request_timeout": 3600,
    "startup_timeout": 600,
}
#  The least each may be (as shared/kiln_manifest.c checks).
_MANIFEST_MINIMUMS: Dict[str, int] = {
    "keep_alive": 0,
    "min_concurrency": 0,
    "max_concurrency": 1,
    "concurrency_buffer": 0,
    "max_multiplexing": 1,
    "request_timeout": 1,
    "startup_timeout": 1,
}
_INT_MAX = 2 ** 31 - 1
_MACHINE_TYPES_MAX = 16
_ENDPOINTS_MAX = 256
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_MACHINE_TYPE_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_ENDPOINT_RE = re.compile(r"^/[^\x00-\x20\x7f?#]{0,1023}$")

#  Log levels kiln knows; the others are mapped onto them.
_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARN", "WARNING": "WARN",
           "ERROR": "ERROR", "CRITICAL": "ERROR", "FATAL": "ERROR"}
#  A log line longer than this is cut: kiln keeps lines, not documents.
_LOG_MESSAGE_MAX_CHARS = 64 * 1024
#  As kiln's wire allows for file data.
_FILE_MAX_BYTES = 512 << 20


# ---------------------------------------------------------------------------
#  The running request, as kiln.serve hands it to a handler

class _Request:
    """One request kiln.serve received. Internal."""

    def __init__(self, request_id: str, path: str, content_type: str) -> None:
        self.id = request_id
        self.path = path
        self.content_type = content_type
        self.cancel_event = threading.Event()


#  The request the code running now serves. A context variable, not a
#  thread-local, so that asyncio tasks (and threads started with
#  contextvars.copy_context().run) see their handler's request.
_current: contextvars.ContextVar[Optional[_Request]] = \
    contextvars.ContextVar("kiln_request", default=None)

#  Set by kiln.serve: how frames reach the runner, and the base of file
#  URLs. None when the app runs outside kiln (imported by a test, say).
_send: Optional[Callable[[Dict[str, Any], bytes], None]] = None
_public_url: str = ""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _level(level: str) -> str:
    return _LEVELS.get(str(level).upper(), "INFO")


def _stderr_line(level: str, message: str) -> None:
    # sys.__stderr__: kiln.serve replaces sys.stdout, never stderr, and
    # the app may have replaced sys.stderr with something of its own.
    stream = sys.__stderr__ or sys.stderr
    try:
        stream.write("%s %s\n" % (level, message))
        stream.flush()
    except (OSError, ValueError):
        pass


def _emit_log(request: Optional[_Request], level: str, message: str) -> None:
    """Sends a log line to a request's logs, or to stderr when there is no
    request (setup, teardown, threads outside any request)."""
    level = _level(level)
    message = str(message)
    if len(message) > _LOG_MESSAGE_MAX_CHARS:
        message = message[:_LOG_MESSAGE_MAX_CHARS] + " [cut]"
    if request is None or _send is None:
        _stderr_line(level, message)
        return
    _send({"type": "log", "request_id": request.id, "level": level,
           "message": message, "timestamp": _now_ms()}, b"")


def log(message: str, level: str = "INFO") -> None:
    """Appends a line to the logs of the request being served (shown by the
    status API with ?logs=1 and streamed live). `level` is DEBUG, INFO,
    WARN (or WARNING) or ERROR. Outside a request the line goes to the
    runner's own log (stderr)."""
    _emit_log(_current.get(), level, message)


def cancelled() -> bool:
    """True once the caller has cancelled the request being served. Long
    handlers should check it between steps and return early. False
    outside a request."""
    request = _current.get()
    return request is not None and request.cancel_event.is_set()


# ---------------------------------------------------------------------------
#  Endpoints and apps

def endpoint(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a method of a kiln.App as the handler of `path` ("/" or
    "/sub/path", matched exactly). The method takes one argument (the
    request body: built into the annotated dataclass, or the parsed JSON
    when annotated dict or not at all, or the raw bytes when annotated
    bytes) or none, and returns a JSON-able value (dicts, lists,
    dataclasses, kiln.File), a kiln.Response, or bytes. It may be async."""
    if not isinstance(path, str) or not _ENDPOINT_RE.match(path):
        raise ValueError("kiln.endpoint: %r is not a path starting with '/', "
                         "without spaces, '?' or '#'" % (path,))

    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        function._kiln_endpoint = path  # type: ignore[attr-defined]
        return function
    return mark


def _endpoint_path(value: Any) -> Optional[str]:
    """The path @kiln.endpoint gave a class attribute, if any."""
    if not callable(value):
        return None
    try:
        path = getattr(value, "_kiln_endpoint", None)
    except Exception:       # an odd object's __getattr__: not an endpoint
        return None
    return path if isinstance(path, str) else None


def _default_name(class_name: str) -> str:
    # MyApp → my-app, as an app name must be [a-z0-9_-].
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", class_name).lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", name).lstrip("-_")
    return name[:63] or "app"


class App:
    """Base class of a kiln app. Say how kiln should run it with class
    keywords (defaults shown):

        class MyApp(kiln.App, name="my-app", keep_alive=300,
                    min_concurrency=0, max_concurrency=2,
                    concurrency_buffer=0, max_multiplexing=1,
                    request_timeout=3600, startup_timeout=600): ...

    and `app_auth="private"|"shared"|"public"` (who may call it: its
    owner's keys, any valid key, or anyone; kiln's default is private),
    `max_queue_length=N` (fal's `fal_max_queue_length`; 0, the default:
    unbounded),
    and class attributes `machine_type` (one, or a list in order of
    preference: "CPU", "GPU-A100", "GPU-H100", ...) and `requirements`
    (pip specs installed in the app's environment). `name` defaults to
    the class name in kebab case (MyApp → my-app).

    With max_multiplexing above 1, endpoints run on that many threads at
    once: guard shared state with a lock.
    """

    machine_type: Union[str, Sequence[str]] = "CPU"
    requirements: Sequence[str] = ()

    _kiln_options: Dict[str, Any] = {}

    def __init_subclass__(cls, **options: Any) -> None:
        known = set(MANIFEST_DEFAULTS) | {"name", "app_auth", "max_queue_length",
                                          "fal_max_queue_length"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError("%s: unknown kiln.App keyword(s) %s; known: %s"
                            % (cls.__name__, ", ".join(unknown), ", ".join(sorted(known))))
        super().__init_subclass__()
        #  A subclass keeps what its base app said and overrides some.
        merged = dict(getattr(cls, "_kiln_options", {}))
        merged.update(options)
        cls._kiln_options = merged

    def setup(self) -> None:
        """Loads the model. Runs once, before the app takes any request;
        an exception here fails the start (its message reaches the app's
        logs)."""

    def teardown(self) -> None:
        """Frees what setup() made. Runs once when the runner retires,
        after the last request finished."""

    def log(self, message: str, level: str = "INFO") -> None:
        """kiln.log: a line in the current request's logs."""
        log(message, level)

    def cancelled(self) -> bool:
        """kiln.cancelled: True once the current request was cancelled."""
        return cancelled()

    @classmethod
    def endpoints(cls) -> Dict[str, Callable[..., Any]]:
        """Path → handler (a plain function, unbound), from this class and
        its bases, in the order they were written. A subclass's endpoint
        for a path replaces its base's, and a method overridden without
        the decorator keeps its base's path, as methods do."""
        names: Dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            mine: Dict[str, str] = {}
            for attr, value in vars(klass).items():
                path = _endpoint_path(value)
                if path is None:
                    continue
                if path in mine:
                    raise ValueError("endpoints: %s is served by both %s and %s"
                                     % (path, mine[path], attr))
                mine[path] = attr
                names[path] = attr
        found: Dict[str, Callable[..., Any]] = {}
        for path, attr in names.items():
            function = getattr(cls, attr, None)
            if callable(function):
                found[path] = function
        return found

    @classmethod
    def manifest(cls) -> Dict[str, Any]:
        """The app's manifest, as kiln stores it (shared/kiln_manifest.h,
        plus "requirements"). ValueError naming the field when invalid."""
        options = cls._kiln_options
        name = options.get("name", _default_name(cls.__name__))
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError("name: must be 1-63 characters of [a-z0-9_-], "
                             "starting with a letter or digit (got %r)" % (name,))
        manifest: Dict[str, Any] = {"name": name}

        types = cls.machine_type
        types = [types] if isinstance(types, str) else list(types or ())
        if not types:
            raise ValueError("machine_types: must name at least one machine type")
        if len(types) > _MACHINE_TYPES_MAX:
            raise ValueError("machine_types: too many (at most %d)" % _MACHINE_TYPES_MAX)
        for machine_type in types:
            if not isinstance(machine_type, str) or not _MACHINE_TYPE_RE.match(machine_type):
                raise ValueError("machine_types: each must be 1-64 characters of "
                                 "[A-Za-z0-9-] (got %r)" % (machine_type,))
        manifest["machine_types"] = types

        for key, default in MANIFEST_DEFAULTS.items():
            value = options.get(key, default)
            least = _MANIFEST_MINIMUMS[key]
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not least <= value <= _INT_MAX:
                raise ValueError("%s: must be an integer, at least %d (got %r)"
                                 % (key, least, value))
            manifest[key] = value
        if manifest["min_concurrency"] > manifest["max_concurrency"]:
            raise ValueError("min_concurrency: must not exceed max_concurrency")

        paths = list(cls.endpoints())
        if not paths:
            raise ValueError("endpoints: must list at least one endpoint "
                             "(mark a method with @kiln.endpoint(\"/\"))")
        if len(paths) > _ENDPOINTS_MAX:
            raise ValueError("endpoints: too many (at most %d)" % _ENDPOINTS_MAX)
        manifest["endpoints"] = paths

        requirements = cls.requirements
        if isinstance(requirements, str):
            raise ValueError("requirements: must be a list of pip specs, not a string")
        requirements = list(requirements or ())
        for spec in requirements:
            if not isinstance(spec, str) or not spec.strip() or "\n" in spec:
                raise ValueError("requirements: each must be a one-line pip spec "
                                 "(got %r)" % (spec,))
        manifest["requirements"] = requirements

        #  Who may call the app (docs/SECURITY.md); kiln's default is private
        app_auth = options.get("app_auth")
        if app_auth is not None:
            if app_auth not in ("private", "shared", "public"):
                raise ValueError("app_auth: must be \"private\", \"shared\" or \"public\" "
                                 "(got %r)" % (app_auth,))
            manifest["app_auth"] = app_auth

        #  Longest queue the app takes (429 queue_full past it); fal's
        #  spelling is fal_max_queue_length. 0: unbounded.
        if "max_queue_length" in options and "fal_max_queue_length" in options:
            raise ValueError("max_queue_length: give it once (fal_max_queue_length is the same)")
        limit = options.get("max_queue_length", options.get("fal_max_queue_length"))
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError("max_queue_length: must be a whole number >= 0 (got %r)" % (limit,))
            manifest["max_queue_length"] = limit
        return manifest


# ---------------------------------------------------------------------------
#  Files and responses

def _store(data: bytes, content_type: str, file_name: Optional[str]) -> Tuple[str, str]:
    """Sends a file to the runner for the current request: (id, file name;
    by default the id with the content type's extension)."""
    request = _current.get()
    if request is None or _send is None:
        raise RuntimeError("kiln files can be stored only while a request is "
                           "served (inside an endpoint, or a context copied from it)")
    if len(data) > _FILE_MAX_BYTES:
        raise ValueError("file is %d bytes, over the %d limit" % (len(data), _FILE_MAX_BYTES))
    file_id = str(uuid.uuid4())
    if not file_name:
        extension = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
        file_name = file_id + extension
    _send({"type": "file", "request_id": request.id, "id": file_id,
           "content_type": content_type, "file_name": file_name}, data)
    return file_id, file_name


class File:
    """A file an app returns: it serialises to fal's
    `{url, content_type, file_name, file_size}`, and GET on the url serves
    the bytes. Make one with File.from_bytes(), or wrap a URL you have."""

    def __init__(self, url: str, content_type: str = "application/octet-stream",
                 file_name: Optional[str] = None, file_size: Optional[int] = None) -> None:
        self.url = url
        self.content_type = content_type
        self.file_name = file_name if file_name is not None else url.rsplit("/", 1)[-1]
        self.file_size = file_size

    @classmethod
    def from_bytes(cls, data: bytes, content_type: Optional[str] = None,
                   file_name: Optional[str] = None) -> "File":
        """Stores `data` with the current request (it is served from
        $KILN_PUBLIC_URL/files/{id}). The content type is guessed from the
        file name when not given; the name defaults to the id."""
        data = bytes(data)
        return cls._stored(data, content_type, file_name, {})

    @classmethod
    def _stored(cls, data: bytes, content_type: Optional[str], file_name: Optional[str],
                extra: Dict[str, Any]) -> "File":
        if content_type is None:
            guessed = mimetypes.guess_type(file_name)[0] if file_name else None
            content_type = guessed or "application/octet-stream"
        file_id, file_name = _store(data, content_type, file_name)
        stored = cls.__new__(cls)
        File.__init__(stored, "%s/files/%s" % (_public_url, file_id),
                      content_type, file_name, len(data))
        for key, value in extra.items():
            setattr(stored, key, value)
        return stored

    @classmethod
    def _from_value(cls, value: Any) -> "File":
        """A file from what a model field holds: a file, its JSON, or a URL."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(url=value)
        if isinstance(value, dict) and isinstance(value.get("url"), str):
            known = ("url", "content_type", "file_name", "file_size", "width", "height")
            try:
                return cls(**{k: v for k, v in value.items() if k in known})
            except TypeError:
                pass
        raise ValueError("expected a kiln %s: an object with a url, or a URL" % cls.__name__)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """Lets pydantic (v2) models hold kiln files, as fal's models hold
        fal's. Only pydantic calls it, so kiln itself needs no pydantic."""
        from pydantic_core import core_schema
        return core_schema.no_info_plain_validator_function(
            cls._from_value,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: value.to_dict() if isinstance(value, File) else value))

    @classmethod
    def __get_validators__(cls) -> Any:
        """The same for pydantic v1."""
        yield cls._from_value

    def to_dict(self) -> Dict[str, Any]:
        """The JSON an endpoint's answer holds for this file."""
        out: Dict[str, Any] = {"url": self.url, "content_type": self.content_type,
                               "file_name": self.file_name}
        if self.file_size is not None:
            out["file_size"] = self.file_size
        return out

    def __repr__(self) -> str:
        return "%s(%r)" % (type(self).__name__, self.to_dict())


_IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg",
                "webp": "image/webp", "gif": "image/gif"}


def _image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) of a PNG or GIF, read from its header; None for
    anything else (say them yourself)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _image_type(data: bytes) -> Optional[str]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class Image(File):
    """An image an app returns: a File that also says its `width` and
    `height` (fal's Image)."""

    def __init__(self, url: str, content_type: str = "image/png",
                 file_name: Optional[str] = None, file_size: Optional[int] = None,
                 width: Optional[int] = None, height: Optional[int] = None) -> None:
        super().__init__(url, content_type, file_name, file_size)
        self.width = width
        self.height = height

    @classmethod
    def from_bytes(cls, data: bytes, format: Optional[str] = None,  # noqa: A002 (fal's name)
                   content_type: Optional[str] = None, file_name: Optional[str] = None,
                   width: Optional[int] = None, height: Optional[int] = None) -> "Image":
        """Stores an encoded image with the current request. `format`
        ("png", "jpeg", "webp", "gif") or `content_type` say what it is,
        else its first bytes do; width and height are read from PNG and
        GIF headers when not given."""
        data = bytes(data)
        if content_type is None and format is not None:
            content_type = _IMAGE_TYPES.get(format.lower(), "image/" + format.lower())
        if content_type is None:
            content_type = _image_type(data) or "application/octet-stream"
        if width is None or height is None:
            size = _image_size(data)
            if size:
                width = size[0] if width is None else width
                height = size[1] if height is None else height
        return cls._stored(data, content_type, file_name,   # type: ignore[return-value]
                           {"width": width, "height": height})

    @classmethod
    def from_pil(cls, image: Any, format: str = "png",  # noqa: A002
                 file_name: Optional[str] = None) -> "Image":
        """Stores a PIL image (encoded as `format`). Needs Pillow in the
        app's requirements; kiln itself does not import it."""
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if format.lower() == "jpg" else format.upper())
        width, height = image.size
        return cls.from_bytes(buffer.getvalue(), format=format, file_name=file_name,
                              width=width, height=height)

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        if self.width is not None:
            out["width"] = self.width
        if self.height is not None:
            out["height"] = self.height
        return out


class Response:
    """An endpoint's answer with every part chosen: the HTTP status, the
    body (bytes or str as they are, anything else as JSON) and the content
    type (by default from the body: JSON, text or octets)."""

    def __init__(self, status: int = 200, body: Any = b"",
                 content_type: Optional[str] = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type

    def __repr__(self) -> str:
        return "Response(status=%r, content_type=%r)" % (self.status, self.content_type)


class HTTPException(Exception):
    """Raise it in an endpoint to answer `status_code` with kiln's error
    shape, `{"detail": detail, "error_type": error_type}`. (An exception
    of another library with int `status_code` and `detail` attributes,
    such as FastAPI's, is answered the same way.)"""

    def __init__(self, status_code: int, detail: Any = "",
                 error_type: str = "app_error") -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.error_type = error_type


#  What type checkers and readers see as the values an endpoint returns.
JSONValue = Union[None, bool, int, float, str, List[Any], Dict[str, Any]]
