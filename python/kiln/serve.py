"""kiln.serve — runs one Python app as a kiln process app.

    python3 -m kiln.serve path/to/app.py ClassName
    python3 -m kiln.serve path/to/app.py::ClassName
    python3 -m kiln.serve path/to/app.py          (the one kiln.App it defines)

A runner starts this process and speaks with it in frames over its
standard input and output (kiln._protocol; docs/PROCESS_APPS.md is the
protocol). It loads the app, runs setup(), says ready, serves requests on
up to max_multiplexing threads, and on stop finishes them, runs
teardown() and exits. With KILN_DESCRIBE=1 it only prints the manifest.

Frames (→ to the runner on stdout, ← from it on stdin):

| frame        | dir | when                                                        |
|--------------|-----|-------------------------------------------------------------|
| describe     | →   | KILN_DESCRIBE=1: the manifest, without setup(); then exit 0 |
| ready        | →   | setup() returned: the manifest                              |
| setup_failed | →   | the app did not load or setup() raised; then exit 3         |
| request      | ←   | a request to serve: given to a free handler thread (queued  |
|              |     | while all max_multiplexing are busy)                        |
| log          | →   | kiln.log / self.log / logging / print() in a handler        |
| file         | →   | kiln.File / kiln.Image .from_bytes in a handler             |
| result       | →   | exactly one per request: the handler's answer, 404 for an   |
|              |     | unknown path, 422 for a bad body, 500 when it raised, 503   |
|              |     | runner_draining when stop came before it started            |
| cancel       | ←   | marks the request, seen by kiln.cancelled(); unknown: ignored |
| stop         | ←   | (or end of stdin, SIGTERM, SIGINT) finish the running       |
|              |     | requests, teardown(), exit 0                                |

Exit status: 0 stopped; 1 lost the runner (stdout closed) or a bug here;
2 usage or protocol error (a line on stderr says which); 3 setup failed.

The real stdin and stdout are kept for frames only: file descriptor 1
becomes a copy of stderr and 0 reads /dev/null, so nothing the app
prints (Python, C extensions, child processes) can corrupt the stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import enum
import importlib.util
import inspect
import io
import json
import logging
import os
import signal
import sys
import threading
import traceback
import types
import typing
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple

import kiln
from kiln import _protocol
from kiln._protocol import ProtocolError

EXIT_OK = 0
EXIT_LOST_RUNNER = 1
EXIT_PROTOCOL = 2
EXIT_SETUP_FAILED = 3

#  How often the main thread looks whether a stop is complete, when no
#  request ending wakes it (a signal, say).
STOP_POLL_S = 0.5
#  Longest text (an error, a traceback) put in one header field.
HEADER_TEXT_MAX_CHARS = 64 * 1024

_USAGE = ("usage: python3 -m kiln.serve APP.py [ClassName]  (or APP.py::ClassName)\n"
          "       KILN_DESCRIBE=1 prints the app's manifest frame and exits")


class _LoadError(Exception):
    """The app could not be loaded: the reason, for setup_failed (and the
    traceback, when importing it raised)."""

    traceback: Optional[str] = None


class _InputError(ValueError):
    """The request body does not fit the handler's argument: a 422."""


# ---------------------------------------------------------------------------
#  The process's own stdio

def _take_stdio() -> Tuple[BinaryIO, BinaryIO]:
    """Keeps the real stdin and stdout for frames and gives the app a
    harmless fd 0 (/dev/null) and fd 1 (a copy of stderr)."""
    sys.stdout.flush()
    frames_in = os.dup(0)               # dup: not inherited by the app's children
    frames_out = os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = _StdoutToLogs()
    return os.fdopen(frames_in, "rb"), os.fdopen(frames_out, "wb")


class _StdoutToLogs(io.TextIOBase):
    """sys.stdout for the app: in a handler, each printed line becomes an
    INFO line of its request's logs (as fal shows prints); elsewhere the
    text goes to stderr."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()     # the handler's unfinished line

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1                            # a copy of stderr, see _take_stdio

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        request = kiln._current.get()
        if request is None:
            stream = sys.__stderr__
            if stream is not None:
                stream.write(text)
            return len(text)
        pending = getattr(self._local, "pending", "") + text
        lines = pending.split("\n")
        self._local.pending = lines.pop()
        for line in lines:
            kiln._emit_log(request, "INFO", line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        request = kiln._current.get()
        pending = getattr(self._local, "pending", "")
        if request is not None and pending:
            self._local.pending = ""
            kiln._emit_log(request, "INFO", pending)
        elif sys.__stderr__ is not None:
            sys.__stderr__.flush()


class _LogHandler(logging.Handler):
    """The logging module's records: into the request's logs in a handler,
    to stderr elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            request = kiln._current.get()
            if request is None:
                kiln._stderr_line(kiln._level(record.levelname),
                                  "%s: %s" % (record.name, message))
            else:
                kiln._emit_log(request, record.levelname, message)
        except Exception:       # logging must never take the app down
            self.handleError(record)


def _install_logging() -> None:
    root = logging.getLogger()
    root.addHandler(_LogHandler())
    #  Python's default (WARNING) would drop the app's info lines.
    if root.level == logging.WARNING:
        root.setLevel(logging.INFO)


def _exit(code: int) -> None:
    """Leaves at once: the reader thread may be blocked on stdin, and the
    work (teardown included) is done."""
    for stream in (sys.__stderr__, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _fail(code: int, message: str) -> None:
    kiln._stderr_line("ERROR", "kiln.serve: " + message)
    _exit(code)


# ---------------------------------------------------------------------------
#  Loading the app

def _parse_args(argv: List[str]) -> Tuple[str, Optional[str]]:
    if len(argv) == 1 and "::" in argv[0]:
        path, _, class_name = argv[0].rpartition("::")
        return path, class_name or None
    if len(argv) in (1, 2) and not argv[0].startswith("-"):
        return argv[0], argv[1] if len(argv) == 2 else None
    raise ValueError(_USAGE)


def load_app(path: str, class_name: Optional[str]) -> type:
    """Imports the file and returns its kiln.App class; _LoadError says
    why not."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise _LoadError("%s: no such file" % path)
    directory, file_name = os.path.split(full)
    stem = os.path.splitext(file_name)[0]
    #  Under its own name when free, so that its sibling modules can
    #  import it without making a second copy.
    module_name = stem if stem.isidentifier() and stem not in sys.modules else "__kiln_app__"
    sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(module_name, full)
    if spec is None or spec.loader is None:
        raise _LoadError("%s: not a Python file" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as error:
        failure = _LoadError("importing %s failed: %s" % (path, _describe_error(error)))
        failure.traceback = traceback.format_exc()
        raise failure from None

    if class_name:
        app_class = getattr(module, class_name, None)
        if app_class is None:
            raise _LoadError("%s defines no %s" % (path, class_name))
        if not (isinstance(app_class, type) and issubclass(app_class, kiln.App)):
            raise _LoadError("%s.%s is not a kiln.App subclass" % (stem, class_name))
        return app_class
    found = [value for value in vars(module).values()
             if isinstance(value, type) and issubclass(value, kiln.App)
             and value is not kiln.App and value.__module__ == module_name]
    if len(found) != 1:
        raise _LoadError("%s defines %s kiln.App classes; name the one to serve (%s::ClassName)"
                         % (path, len(found) or "no", path))
    return found[0]


def _cut(text: str) -> str:
    """Text for a header field, short enough that a header never breaks
    its limit (the runner cuts further, to what its wire takes)."""
    return text if len(text) <= HEADER_TEXT_MAX_CHARS else text[:HEADER_TEXT_MAX_CHARS] + " [cut]"


def _describe_error(error: BaseException) -> str:
    text = str(error)
    return "%s: %s" % (type(error).__name__, text) if text else type(error).__name__


# ---------------------------------------------------------------------------
#  Request bodies in, answers out

#  The type of `int | None` (Python 3.10+), which typing.Union is not.
_UnionType = getattr(types, "UnionType", None)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """The JSON value as the annotation `tp` wants it; _InputError (a 422)
    when it does not fit. Types it does not know pass the value through."""
    if tp is Any or tp is object or tp is inspect.Parameter.empty or isinstance(tp, str):
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (_UnionType is not None and origin is _UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except _InputError as error:
                errors.append(str(error))
        raise _InputError(errors[0] if len(errors) == 1 else
                          "%s: fits none of %s" % (where, ", ".join(_type_name(a) for a in args)))
    if origin is typing.Literal:
        if value not in args:
            raise _InputError("%s: must be one of %s" % (where, ", ".join(json.dumps(a) for a in args)))
        return value
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            raise _InputError("%s: expected an array" % where)
        kind = origin or tp
        if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _InputError("%s: expected %d items" % (where, len(args)))
            return tuple(_convert(v, a, "%s[%d]" % (where, i))
                         for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        return kind(_convert(v, item_type, "%s[%d]" % (where, i)) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _InputError("%s: expected an object" % where)
        value_type = args[1] if len(args) == 2 else Any
        return {k: _convert(v, value_type, "%s.%s" % (where, k)) for k, v in value.items()}
    if not isinstance(tp, type):
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(value, tp, where)
    if hasattr(tp, "model_validate") or hasattr(tp, "parse_obj"):
        #  A pydantic model (v2, or v1): it validates itself.
        try:
            return tp.model_validate(value) if hasattr(tp, "model_validate") else tp.parse_obj(value)
        except ValueError as error:
            raise _InputError("%s: %s" % (where, error)) from None
    if issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _InputError("%s: must be one of %s"
                              % (where, ", ".join(json.dumps(m.value) for m in tp))) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise _InputError("%s: expected a boolean" % where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _InputError("%s: expected an integer" % where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _InputError("%s: expected a number" % where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _InputError("%s: expected a string" % where)
        return value
    return value


def _build_dataclass(value: Any, tp: type, where: str) -> Any:
    if not isinstance(value, dict):
        raise _InputError("%s: expected an object (%s)" % (where, tp.__name__))
    try:
        hints = typing.get_type_hints(tp)
    except Exception:       # an annotation it cannot resolve: take values as they are
        hints = {}
    kwargs = {}
    for field in dataclasses.fields(tp):
        if not field.init:
            continue
        if field.name in value:
            kwargs[field.name] = _convert(value[field.name], hints.get(field.name, Any),
                                          "%s.%s" % (where, field.name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _InputError("%s.%s: required" % (where, field.name))
    #  Keys the dataclass does not know are ignored, as pydantic does.
    try:
        return tp(**kwargs)
    except (TypeError, ValueError) as error:   # its __post_init__ said no
        raise _InputError("%s: %s" % (where, error)) from None


def _to_json(value: Any, where: str = "result") -> Any:
    """The handler's answer as plain JSON values; TypeError names the part
    that is not JSON-able."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, kiln.File):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return _to_json(value.value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _to_json(getattr(value, field.name), "%s.%s" % (where, field.name))
                for field in dataclasses.fields(value)}
    if hasattr(value, "model_dump") and callable(value.model_dump):
        return _to_json(value.model_dump(), where)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise TypeError("%s: a key of type %s is not JSON-able" % (where, type(key).__name__))
            out[key if isinstance(key, str) else json.dumps(key)] = \
                _to_json(item, "%s.%s" % (where, key))
        return out
    if isinstance(value, (list, tuple)):
        return [_to_json(item, "%s[%d]" % (where, i)) for i, item in enumerate(value)]
    raise TypeError("%s: a %s is not JSON-able" % (where, type(value).__name__))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(_to_json(value), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8", "replace")


#  An answer: (status, content type, body, (error, error_type) or None).
Answer = Tuple[int, str, bytes, Optional[Tuple[str, str]]]


def _error_answer(status: int, error_type: str, detail: Any) -> Answer:
    body = _json_bytes({"detail": detail, "error_type": error_type})
    text = detail if isinstance(detail, str) else json.dumps(_to_json(detail))
    return status, "application/json", body, (_cut(text), _cut(error_type))


def _encode_answer(value: Any) -> Answer:
    if isinstance(value, kiln.Response):
        status = value.status
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("the handler answered status %r, not an HTTP status" % (status,))
        if value.content_type is not None and not isinstance(value.content_type, str):
            raise ValueError("the handler answered content type %r, not a string"
                             % (value.content_type,))
        body = value.body
        if isinstance(body, (bytes, bytearray, memoryview)):
            data, default_type = bytes(body), "application/octet-stream"
        elif isinstance(body, str):
            data, default_type = body.encode("utf-8", "replace"), "text/plain; charset=utf-8"
        else:
            data, default_type = _json_bytes(body), "application/json"
        return status, value.content_type or default_type, data, None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 200, "application/octet-stream", bytes(value), None
    return 200, "application/json", _json_bytes(value), None


def _http_error(error: BaseException) -> Optional[Answer]:
    """kiln.HTTPException, or another library's exception that carries an
    HTTP status (FastAPI's), as its answer."""
    status = getattr(error, "status_code", None)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599 \
            or not hasattr(error, "detail"):
        return None
    error_type = getattr(error, "error_type", None)
    if not isinstance(error_type, str) or not error_type:
        error_type = "app_error"
    try:
        return _error_answer(status, error_type, getattr(error, "detail"))
    except (TypeError, ValueError):
        return _error_answer(status, error_type, str(getattr(error, "detail")))


class Endpoint:
    """One handler, and how to call it: what its argument wants."""

    def __init__(self, path: str, function: Callable[..., Any]) -> None:
        self.path = path
        self.function = function
        name = getattr(function, "__qualname__", path)
        parameters = list(inspect.signature(function).parameters.values())
        if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                        inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise ValueError("endpoint %s: %s() must be a method: (self) or (self, request)"
                             % (path, name))
        parameters = parameters[1:]     # self
        positional = [p for p in parameters
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = [p for p in parameters if p.default is p.empty
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if len(required) > 1 or any(p.kind == p.KEYWORD_ONLY for p in required):
            raise ValueError("endpoint %s: %s() must take one argument, the request"
                             % (path, name))
        self.takes_argument = bool(positional)
        self.annotation: Any = Any
        if positional:
            try:
                hints = typing.get_type_hints(function)
            except Exception:   # an annotation it cannot resolve: take the JSON as it is
                hints = {}
            self.annotation = hints.get(positional[0].name, Any)

    def arguments(self, body: bytes) -> Tuple[Any, ...]:
        if not self.takes_argument:
            return ()
        if self.annotation is bytes:
            return (body,)
        if not body or body.isspace():
            value: Any = {}     # a bare POST: a dataclass of defaults may take it
        else:
            try:
                value = json.loads(body, parse_constant=_protocol._refuse_constant)
            except (UnicodeDecodeError, ValueError) as error:
                raise _InputError("the request body is not valid JSON: %s" % error) from None
        return (_convert(value, self.annotation, "request"),)


def endpoints_of(app_class: type) -> Dict[str, Endpoint]:
    """The app's endpoints, checked; ValueError names the one that is wrong."""
    return {path: Endpoint(path, function) for path, function in app_class.endpoints().items()}


# ---------------------------------------------------------------------------
#  The server

def _result_frame(request_id: str, answer: Answer) -> Tuple[Dict[str, Any], bytes]:
    status, content_type, data, error = answer
    if len(data) > _protocol.BODY_MAX_BYTES:
        status, content_type, data, error = _error_answer(
            500, "runner_server_error", "the answer is %d bytes, over the %d limit"
            % (len(data), _protocol.BODY_MAX_BYTES))
    header: Dict[str, Any] = {"type": "result", "request_id": request_id,
                              "status": status, "content_type": _cut(content_type)}
    if error is not None:
        header["error"], header["error_type"] = error
    return header, data


class _Server:
    """Serves requests from the reader thread on a pool of
    max_multiplexing threads, and knows when a stop is complete."""

    def __init__(self, app: Any, endpoints: Dict[str, Endpoint], max_multiplexing: int,
                 send: Callable[[Dict[str, Any], bytes], None]) -> None:
        self.app = app
        self.endpoints = endpoints
        self.send = send
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_multiplexing, thread_name_prefix="kiln-handler")
        #  Reentrant: a signal may run begin_stop on the main thread while
        #  it holds the lock.
        self.cond = threading.Condition(threading.RLock())
        self.requests: Dict[str, kiln._Request] = {}   # received, not yet answered
        self.started: set = set()
        self.stopping = False

    # -- reader thread ----------------------------------------------------

    def read_loop(self, stream: BinaryIO) -> None:
        try:
            while True:
                frame = _protocol.read_frame(stream)
                if frame is None:
                    self.begin_stop("end of stdin")
                    return
                self.on_frame(*frame)
        except ProtocolError as error:
            _fail(EXIT_PROTOCOL, "protocol error: %s" % error)
        except BaseException:
            traceback.print_exc()
            _fail(EXIT_LOST_RUNNER, "the frame reader failed")

    def on_frame(self, header: Dict[str, Any], body: bytes) -> None:
        kind = header["type"]
        if kind == "request":
            request_id = header.get("request_id")
            path = header.get("path")
            content_type = header.get("content_type", "")
            if not isinstance(request_id, str) or not request_id \
                    or not isinstance(path, str) or not isinstance(content_type, str):
                raise ProtocolError("a request frame needs string request_id and path "
                                    "(and content_type, when given)")
            request = kiln._Request(request_id, path, content_type)
            with self.cond:
                if request_id in self.requests:
                    raise ProtocolError("request %s is already being served" % request_id)
                draining = self.stopping
                if not draining:
                    self.requests[request_id] = request
            if draining:
                self._send_result(request_id, _error_answer(
                    503, "runner_draining", "the app is stopping; the request did not start"))
            else:
                self.pool.submit(self._serve, request, body)
        elif kind == "cancel":
            request_id = header.get("request_id")
            if not isinstance(request_id, str):
                raise ProtocolError("a cancel frame needs a string request_id")
            with self.cond:
                request = self.requests.get(request_id)
            #  None: it finished already (its result crossed the cancel).
            if request is not None:
                request.cancel_event.set()
        elif kind == "stop":
            self.begin_stop("asked to stop")
        else:
            kiln._stderr_line("WARN", "kiln.serve: ignored a %r frame" % kind)

    def begin_stop(self, why: str) -> None:
        """Takes no more requests; the ones that did not start yet are
        answered 503 runner_draining so the runner can hand them on."""
        with self.cond:
            if self.stopping:
                return
            self.stopping = True
            dropped = [rid for rid in self.requests if rid not in self.started]
            for rid in dropped:
                del self.requests[rid]
            running = len(self.requests)
            self.cond.notify_all()
        kiln._stderr_line("INFO", "kiln.serve: stopping (%s): %d request(s) running, "
                          "%d not started handed back" % (why, running, len(dropped)))
        for rid in dropped:
            self._send_result(rid, _error_answer(
                503, "runner_draining", "the app is stopping; the request did not start"))

    # -- handler threads --------------------------------------------------

    def _serve(self, request: kiln._Request, body: bytes) -> None:
        with self.cond:
            if request.id not in self.requests:
                return          # handed back by begin_stop
            self.started.add(request.id)
        try:
            #  A fresh context per request: what one handler sets in a
            #  context variable is not seen by the next.
            answer = contextvars.Context().run(self._answer_in_context, request, body)
        except BaseException as error:      # a bug of ours: still answer
            traceback.print_exc()
            answer = _error_answer(500, "runner_server_error", _describe_error(error))
        #  Done before the result goes out: the runner may reuse or forget
        #  the id the moment it reads the result. (On stop, the pool's
        #  shutdown still waits for this thread to write it.)
        with self.cond:
            self.requests.pop(request.id, None)
            self.started.discard(request.id)
            self.cond.notify_all()
        self._send_result(request.id, answer)

    def _answer_in_context(self, request: kiln._Request, body: bytes) -> Answer:
        kiln._current.set(request)
        try:
            return self._answer(request, body)
        finally:
            sys.stdout.flush()      # a last printed line without its newline

    def _answer(self, request: kiln._Request, body: bytes) -> Answer:
        endpoint = self.endpoints.get(request.path)
        if endpoint is None:
            return _error_answer(404, "not_found", "no endpoint %s; this app serves %s"
                                 % (request.path, ", ".join(self.endpoints)))
        try:
            arguments = endpoint.arguments(body)
        except _InputError as error:
            return _error_answer(422, "bad_request", str(error))
        try:
            value = endpoint.function(self.app, *arguments)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            return _encode_answer(value)
        except BaseException as error:
            answer = _http_error(error)
            if answer is not None:
                return answer
            detail = _describe_error(error)
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            kiln._emit_log(request, "ERROR", text.rstrip("\n"))
            kiln._stderr_line("ERROR", "request %s: %s" % (request.id, detail))
            return _error_answer(500, "runner_server_error", detail)

    def _send_result(self, request_id: str, answer: Answer) -> None:
        try:
            self.send(*_result_frame(request_id, answer))
        except ValueError as failure:       # not a frame after all: still answer
            self.send(*_result_frame(request_id, _error_answer(
                500, "runner_server_error", "the answer could not be sent: %s" % failure)))

    # -- main thread ------------------------------------------------------

    def wait_stopped(self) -> None:
        with self.cond:
            while not (self.stopping and not self.requests):
                self.cond.wait(STOP_POLL_S)
        self.pool.shutdown(wait=True)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


# ---------------------------------------------------------------------------
#  Main

def main(argv: Optional[List[str]] = None) -> None:
    """Runs the process; never returns (it exits with the status above)."""
    try:
        path, class_name = _parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        _fail(EXIT_PROTOCOL, str(error))
    describe = os.environ.get("KILN_DESCRIBE", "") not in ("", "0")
    frames_in, frames_out = _take_stdio()
    writer = _protocol.FrameWriter(frames_out)

    def send(header: Dict[str, Any], body: bytes = b"") -> None:
        try:
            writer.send(header, body)
        except OSError as error:
            _fail(EXIT_LOST_RUNNER, "lost the runner (stdout: %s)" % error)

    kiln._send = send
    kiln._public_url = os.environ.get("KILN_PUBLIC_URL", "").rstrip("/")
    _install_logging()

    try:
        app_class = load_app(path, class_name)
        manifest = app_class.manifest()
        endpoints = endpoints_of(app_class)
    except Exception as error:      # the app's own code may raise anything here
        text = str(error) if isinstance(error, _LoadError) else \
            "invalid app: %s" % (error if isinstance(error, (ValueError, TypeError))
                                 else _describe_error(error))
        failed: Dict[str, Any] = {"type": "setup_failed", "error": _cut(text)}
        if getattr(error, "traceback", None):
            failed["traceback"] = _cut(error.traceback)     # type: ignore[union-attr]
            kiln._stderr_line("ERROR", failed["traceback"].rstrip("\n"))
        send(failed)
        _fail(EXIT_SETUP_FAILED, text)

    if describe:
        send({"type": "describe", "protocol": _protocol.PROTOCOL_VERSION, "manifest": manifest})
        _exit(EXIT_OK)

    try:
        app = app_class()
        app.setup()
    except BaseException as error:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        kiln._stderr_line("ERROR", text.rstrip("\n"))
        send({"type": "setup_failed", "error": _cut(_describe_error(error)),
              "traceback": _cut(text)})
        _fail(EXIT_SETUP_FAILED, "setup() failed: %s" % _describe_error(error))

    server = _Server(app, endpoints, manifest["max_multiplexing"], send)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: server.begin_stop(
            "signal %d" % signum))
    send({"type": "ready", "protocol": _protocol.PROTOCOL_VERSION, "manifest": manifest})
    threading.Thread(target=server.read_loop, args=(frames_in,),
                     name="kiln-reader", daemon=True).start()
    server.wait_stopped()
    try:
        app.teardown()
    except BaseException:
        kiln._stderr_line("ERROR", "teardown() failed:\n" + traceback.format_exc().rstrip("\n"))
    kiln._stderr_line("INFO", "kiln.serve: stopped")
    _exit(EXIT_OK)


if __name__ == "__main__":
    main()
