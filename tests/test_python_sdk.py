"""The Python SDK and the process-app protocol (docs/PROCESS_APPS.md),
from the runner's side: each test starts a real `python3 -m kiln.serve`
child and speaks frames with it over real pipes, as kiln-runner will.
Plus a unit test of the framing itself. Standard library only; needs no
kiln build (KILN_SOURCE_DIR, or this file's checkout, gives the SDK).
"""

import json
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import io

SOURCE_DIR = os.environ.get('KILN_SOURCE_DIR') or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
PYTHON_DIR = os.path.join(SOURCE_DIR, 'python')
HELLO_APP = os.path.join(SOURCE_DIR, 'examples', 'python', 'hello.py')
PROCESS_APPS_DOC = os.path.join(SOURCE_DIR, 'docs', 'PROCESS_APPS.md')
sys.path.insert(0, PYTHON_DIR)

from kiln import _protocol                      # noqa: E402
from kiln._protocol import ProtocolError        # noqa: E402

#  How long a frame may take to come (a process start included).
FRAME_TIMEOUT_S = 15
#  How long a process may take to exit once it should.
EXIT_TIMEOUT_S = 15
PUBLIC_URL = 'http://kiln.test:8080'
UUID4_RE = re.compile(
    r'^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$')

#  Apps for the tests, one behaviour per endpoint.
TEST_APPS = textwrap.dedent('''
    from __future__ import annotations      # annotations as strings, resolved by kiln

    import asyncio
    import logging
    import os
    import sys
    import threading
    import time
    from dataclasses import dataclass
    from typing import List, Optional

    import kiln

    print("printed at import")                  # must reach stderr, not the frames
    os.write(1, b"raw bytes on fd 1 at import\\n")


    @dataclass
    class Point:
        x: int
        y: int = 0


    @dataclass
    class Shape:
        name: str
        points: List[Point]
        scale: float = 1.0
        tags: Optional[List[str]] = None


    @dataclass
    class Area:
        name: str
        count: int
        scaled: List[Point]
        tags: Optional[List[str]]


    def _teardown(self):
        marker = os.environ.get("KILN_TEST_MARKER")
        if marker:
            with open(marker, "w") as f:
                f.write("teardown after %d call(s)" % self.calls)


    def _wait_for_cancel(self, data):
        self.calls += 1
        self.log("waiting for cancel")
        deadline = time.monotonic() + 10
        while not self.cancelled():
            if time.monotonic() > deadline:
                return {"cancelled": False}
            time.sleep(0.02)
        return {"cancelled": True}


    class Misc(kiln.App, name="misc", keep_alive=10, min_concurrency=1,
               max_concurrency=3, concurrency_buffer=1, max_multiplexing=2,
               request_timeout=60, startup_timeout=30):
        machine_type = ["GPU-H100", "CPU"]
        requirements = ["numpy==1.26.4", "pillow"]

        def setup(self):
            print("printed in setup")
            self.barrier = threading.Barrier(2, timeout=5)
            self.calls = 0

        teardown = _teardown
        wait = kiln.endpoint("/wait")(_wait_for_cancel)

        @kiln.endpoint("/")
        def shapes(self, shape: Shape) -> Area:
            self.calls += 1
            return Area(name=shape.name.upper(), count=len(shape.points),
                        scaled=[Point(p.x * shape.scale, p.y * shape.scale) for p in shape.points],
                        tags=shape.tags)

        @kiln.endpoint("/raw")
        def raw(self, body: bytes) -> kiln.Response:
            return kiln.Response(201, body[::-1], "application/x-reversed")

        @kiln.endpoint("/dict")
        def keys(self, data: dict):
            return {"keys": sorted(data)}

        @kiln.endpoint("/none")
        def no_argument(self):
            return [1, "two", None]

        @kiln.endpoint("/boom")
        def boom(self, data):
            raise ValueError("boom")

        @kiln.endpoint("/teapot")
        def teapot(self, data):
            raise kiln.HTTPException(418, "short and stout", "teapot")

        @kiln.endpoint("/huge-error")
        def huge_error(self, data):
            raise ValueError("x" * 2000000)

        @kiln.endpoint("/bad-return")
        def bad_return(self, data):
            return {"s": {1, 2}}

        @kiln.endpoint("/print")
        def printer(self, data):
            print("line one")
            print("line", "two")
            sys.stdout.write("no newline")
            os.write(1, b"raw fd 1 in handler\\n")
            logging.getLogger("misc").warning("careful")
            return {"printed": True}

        @kiln.endpoint("/together")
        def together(self, data):
            self.barrier.wait()             # breaks (500) unless two calls overlap
            return {"overlapped": True}

        @kiln.endpoint("/async")
        async def coroutine(self, data):
            await asyncio.sleep(0.01)
            kiln.log("from a coroutine", "WARNING")
            return {"async": True}

        @kiln.endpoint("/file")
        def file(self, data):
            return {"file": kiln.File.from_bytes(b"hello file", file_name="hello.txt")}


    class Serial(kiln.App):
        def setup(self):
            self.calls = 0

        teardown = _teardown
        wait = kiln.endpoint("/wait")(_wait_for_cancel)


    class BrokenSetup(kiln.App):
        def setup(self):
            raise RuntimeError("no weights here")

        @kiln.endpoint("/")
        def run(self, data):
            return {}


    class ExitsInSetup(kiln.App):
        def setup(self):
            sys.exit(7)

        @kiln.endpoint("/")
        def run(self, data):
            return {}


    class BadManifest(kiln.App, keep_alive=-1):
        @kiln.endpoint("/")
        def run(self, data):
            return {}
''')


class AppProcess:
    """A `python3 -m kiln.serve` child, with a thread that reads its frames
    into a queue so that every wait has a timeout."""

    def __init__(self, args, env=None, command=None):
        full_env = dict(os.environ)
        full_env['PYTHONPATH'] = os.pathsep.join(
            p for p in (PYTHON_DIR, os.environ.get('PYTHONPATH')) if p)
        full_env['KILN_PUBLIC_URL'] = PUBLIC_URL + '/'
        full_env['PYTHONDONTWRITEBYTECODE'] = '1'
        full_env.pop('KILN_DESCRIBE', None)
        full_env.update(env or {})
        command = command or [sys.executable, '-m', 'kiln.serve']
        self.proc = subprocess.Popen(command + list(args),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full_env)
        self.frames = queue.Queue()
        self.stderr_chunks = []
        threading.Thread(target=self._read_frames, daemon=True).start()
        self.stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self.stderr_thread.start()

    def _read_frames(self):
        try:
            while True:
                frame = _protocol.read_frame(self.proc.stdout)
                if frame is None:
                    break
                self.frames.put(frame)
        except (ProtocolError, OSError, ValueError) as error:
            self.frames.put(('corrupt', error))
        self.frames.put(None)

    def _read_stderr(self):
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b''):
            self.stderr_chunks.append(chunk)

    def stderr(self):
        return b''.join(self.stderr_chunks).decode('utf-8', 'replace')

    def wait_stderr(self, text, timeout=FRAME_TIMEOUT_S):
        """Fails unless stderr shows text within timeout."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if time.monotonic() > deadline:
                raise AssertionError('%r not on stderr:\n%s' % (text, self.stderr()))
            time.sleep(0.02)

    def next(self, timeout=FRAME_TIMEOUT_S):
        """The next frame (header, body); fails on timeout, on the end of
        stdout, or on bytes that are not frames."""
        try:
            frame = self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError('no frame within %ss; stderr:\n%s' % (timeout, self.stderr()))
        if frame is None:
            self.frames.put(None)
            raise AssertionError('stdout ended (exit %s); stderr:\n%s'
                                 % (self.proc.poll(), self.stderr()))
        if frame[0] == 'corrupt':
            raise AssertionError('stdout is not frames: %s; stderr:\n%s' % (frame[1], self.stderr()))
        return frame

    def expect(self, frame_type, timeout=FRAME_TIMEOUT_S):
        header, body = self.next(timeout)
        if header['type'] != frame_type:
            raise AssertionError('expected a %s frame, got %r; stderr:\n%s'
                                 % (frame_type, header, self.stderr()))
        return header, body

    def stdout_ended(self, timeout=FRAME_TIMEOUT_S):
        """True when stdout ends with no frame but those already taken."""
        try:
            return self.frames.get(timeout=timeout) is None
        except queue.Empty:
            return False

    def send(self, header, body=b''):
        self.send_raw(_protocol.encode(header, body))

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, request_id, path, body=b'', content_type='application/json'):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send({'type': 'request', 'request_id': request_id, 'path': path,
                   'content_type': content_type}, body)

    def until_results(self, *request_ids):
        """Frames until each of request_ids has its result: {id: [frames]},
        each list ending with the result."""
        seen = {rid: [] for rid in request_ids}
        waiting = set(request_ids)
        while waiting:
            header, body = self.next()
            rid = header.get('request_id')
            if rid not in seen:
                raise AssertionError('a frame for an unexpected request: %r' % header)
            if rid not in waiting:
                raise AssertionError('a frame after the result of %s: %r' % (rid, header))
            seen[rid].append((header, body))
            if header['type'] == 'result':
                waiting.discard(rid)
        return seen

    def call(self, path, body=b'', request_id='r-1', content_type='application/json'):
        """One request: (frames before its result, result header, result body)."""
        self.request(request_id, path, body, content_type)
        frames = self.until_results(request_id)[request_id]
        result, data = frames[-1]
        return frames[:-1], result, data

    def wait(self, timeout=EXIT_TIMEOUT_S):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError('still running after %ss; stderr:\n%s' % (timeout, self.stderr()))
        self.stderr_thread.join(timeout)
        return code

    def close_stdin(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


class FramingTest(unittest.TestCase):
    """kiln._protocol on its own."""

    def test_frame_layout(self):
        data = _protocol.encode({'type': 'log', 'message': 'h\u00e9'}, b'\x00\x01')
        header = '{"type":"log","message":"h\u00e9"}'.encode()
        self.assertEqual(data, struct.pack('>I', len(header)) + header
                         + struct.pack('>I', 2) + b'\x00\x01')
        self.assertEqual(_protocol.read_frame(io.BytesIO(data)),
                         ({'type': 'log', 'message': 'h\u00e9'}, b'\x00\x01'))

    def test_stream_of_frames(self):
        stream = io.BytesIO(_protocol.encode({'type': 'a'}) + _protocol.encode({'type': 'b'}, b'xyz'))
        self.assertEqual(_protocol.read_frame(stream), ({'type': 'a'}, b''))
        self.assertEqual(_protocol.read_frame(stream), ({'type': 'b'}, b'xyz'))
        self.assertIsNone(_protocol.read_frame(stream))        # clean end

    def test_writer(self):
        out = io.BytesIO()
        writer = _protocol.FrameWriter(out)
        writer.send({'type': 'result', 'status': 200}, b'{}')
        self.assertEqual(out.getvalue(), _protocol.encode({'type': 'result', 'status': 200}, b'{}'))
        with self.assertRaises(ValueError):
            writer.send({'no': 'type'})

    def test_refused(self):
        def frame(header_bytes, body=b''):
            return (struct.pack('>I', len(header_bytes)) + header_bytes
                    + struct.pack('>I', len(body)) + body)
        bad = {
            'header over 1 MiB': struct.pack('>I', _protocol.HEADER_MAX_BYTES + 1) + b'{}',
            'body over 512 MiB': frame(b'{"type":"x"}')[:-4]
            + struct.pack('>I', _protocol.BODY_MAX_BYTES + 1),
            'not JSON': frame(b'{type'),
            'not UTF-8': frame(b'{"type":"\xff"}'),
            'not an object': frame(b'["type"]'),
            'no type': frame(b'{"kind":"x"}'),
            'type not a string': frame(b'{"type":1}'),
            'NaN': frame(b'{"type":"x","v":NaN}'),
            'cut in the length': b'\x00\x00',
            'cut in the header': frame(b'{"type":"x"}')[:8],
            'cut before the body length': frame(b'{"type":"x"}')[:-4],
            'cut in the body': frame(b'{"type":"x"}', b'abcdef')[:-2],
        }
        for name, data in bad.items():
            with self.subTest(name):
                with self.assertRaises(ProtocolError):
                    _protocol.read_frame(io.BytesIO(data))
        with self.assertRaises(ValueError):
            _protocol.encode({'type': 'x', 'big': 'a' * _protocol.HEADER_MAX_BYTES})


class ConvertTest(unittest.TestCase):
    """How kiln.serve fits a JSON body to a handler's annotation, in
    process (the child-process tests cover the common cases)."""

    def test_convert(self):
        import enum
        import typing
        from kiln import serve

        class Colour(enum.Enum):
            RED = 'red'

        fits = [
            (3, typing.Optional[int], 3),
            (None, typing.Optional[int], None),
            ('red', Colour, Colour.RED),
            ('a', typing.Literal['a', 'b'], 'a'),
            ([1, 'x'], typing.Tuple[int, str], (1, 'x')),
            ({'k': [1]}, typing.Dict[str, typing.List[float]], {'k': [1.0]}),
            ({'anything': 1}, typing.Any, {'anything': 1}),
        ]
        if sys.version_info >= (3, 10):
            fits.append((2, eval('int | None'), 2))
        for value, tp, expected in fits:
            with self.subTest(tp=tp):
                self.assertEqual(serve._convert(value, tp, 'request'), expected)
        misfits = [(True, int), ('3', int), ('blue', Colour), ('c', typing.Literal['a']),
                   ([1], typing.Tuple[int, str]), ('x', typing.Optional[int])]
        for value, tp in misfits:
            with self.subTest(tp=tp, value=value):
                with self.assertRaises(serve._InputError):
                    serve._convert(value, tp, 'request')


class ProcessTestCase(unittest.TestCase):
    """Starts kiln.serve children on the test apps; kills them after."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='kiln-pysdk-')
        cls.apps = os.path.join(cls.tmp, 'test_apps.py')
        with open(cls.apps, 'w') as f:
            f.write(TEST_APPS)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def start(self, *args, env=None, command=None):
        process = AppProcess(args, env, command)
        self.addCleanup(process.kill)
        return process

    def start_ready(self, class_name, env=None):
        """A test app, started and ready: (process, ready header)."""
        process = self.start(self.apps, class_name, env=env)
        header, _ = process.expect('ready')
        return process, header

    def marker(self):
        path = os.path.join(self.tmp, 'marker-%s' % self.id().rsplit('.', 1)[-1])
        if os.path.exists(path):
            os.unlink(path)
        return path

    def assertJSON(self, result, data, status, expected=None):
        self.assertEqual(result['status'], status, data)
        self.assertEqual(result['content_type'], 'application/json')
        value = json.loads(data)
        if expected is not None:
            self.assertEqual(value, expected)
        return value


class LifecycleTest(ProcessTestCase):

    MISC_MANIFEST = {
        'name': 'misc', 'machine_types': ['GPU-H100', 'CPU'], 'keep_alive': 10,
        'min_concurrency': 1, 'max_concurrency': 3, 'concurrency_buffer': 1,
        'max_multiplexing': 2, 'request_timeout': 60, 'startup_timeout': 30,
        'endpoints': ['/wait', '/', '/raw', '/dict', '/none', '/boom', '/teapot',
                      '/huge-error', '/bad-return', '/print', '/together', '/async', '/file'],
        'requirements': ['numpy==1.26.4', 'pillow'],
    }

    def test_describe(self):
        process = self.start(self.apps, 'Misc', env={'KILN_DESCRIBE': '1'})
        header, body = process.expect('describe')
        self.assertEqual(header, {'type': 'describe', 'protocol': 1,
                                  'manifest': self.MISC_MANIFEST})
        self.assertEqual(body, b'')
        self.assertTrue(process.stdout_ended(), 'frames after describe')
        self.assertEqual(process.wait(), 0)
        self.assertNotIn('printed in setup', process.stderr())

    def test_describe_defaults_and_no_setup(self):
        #  setup() raises, but describe does not run it.
        process = self.start(self.apps + '::BrokenSetup', env={'KILN_DESCRIBE': '1'})
        header, _ = process.expect('describe')
        self.assertEqual(header['manifest'], {
            'name': 'broken-setup', 'machine_types': ['CPU'], 'keep_alive': 300,
            'min_concurrency': 0, 'max_concurrency': 2, 'concurrency_buffer': 0,
            'max_multiplexing': 1, 'request_timeout': 3600, 'startup_timeout': 600,
            'endpoints': ['/'], 'requirements': []})
        self.assertEqual(process.wait(), 0)

    def test_describe_invalid_manifest(self):
        process = self.start(self.apps, 'BadManifest', env={'KILN_DESCRIBE': '1'})
        header, _ = process.expect('setup_failed')
        self.assertIn('keep_alive: must be an integer, at least 0', header['error'])
        self.assertEqual(process.wait(), 3)

    def test_ready_then_stop_runs_teardown(self):
        marker = self.marker()
        process, ready = self.start_ready('Misc', env={'KILN_TEST_MARKER': marker})
        self.assertEqual(ready, {'type': 'ready', 'protocol': 1, 'manifest': self.MISC_MANIFEST})
        _, result, data = process.call('/', {'name': 'sq', 'points': [{'x': 1}]})
        self.assertEqual(result['status'], 200, data)
        process.send({'type': 'stop'})
        self.assertTrue(process.stdout_ended(), 'frames after stop')
        self.assertEqual(process.wait(), 0, process.stderr())
        with open(marker) as f:
            self.assertEqual(f.read(), 'teardown after 1 call(s)')

    def test_end_of_stdin_is_stop(self):
        marker = self.marker()
        process, _ = self.start_ready('Serial', env={'KILN_TEST_MARKER': marker})
        process.close_stdin()
        self.assertEqual(process.wait(), 0, process.stderr())
        self.assertTrue(os.path.exists(marker), 'teardown did not run')

    def test_stop_finishes_running_and_hands_back_queued(self):
        marker = self.marker()
        process, _ = self.start_ready('Serial', env={'KILN_TEST_MARKER': marker})
        process.request('a', '/wait', {})
        header, _ = process.expect('log')                  # a runs...
        self.assertEqual((header['request_id'], header['message']), ('a', 'waiting for cancel'))
        process.request('b', '/wait', {})                   # ...b waits for the one thread
        process.send({'type': 'stop'})
        header, data = process.expect('result')
        self.assertEqual(header['request_id'], 'b')
        self.assertEqual((header['status'], header.get('error_type')), (503, 'runner_draining'))
        self.assertEqual(json.loads(data)['error_type'], 'runner_draining')
        process.request('c', '/wait', {})                   # after stop: handed back at once
        header, _ = process.expect('result')
        self.assertEqual((header['request_id'], header['status']), ('c', 503))
        self.assertIsNone(process.proc.poll(), 'exited with a request running')
        process.send({'type': 'cancel', 'request_id': 'a'})  # cancels still reach it
        header, data = process.expect('result')
        self.assertEqual((header['request_id'], header['status']), ('a', 200))
        self.assertEqual(json.loads(data), {'cancelled': True})
        self.assertEqual(process.wait(), 0, process.stderr())
        with open(marker) as f:
            self.assertEqual(f.read(), 'teardown after 1 call(s)')

    def test_sigterm_is_stop(self):
        marker = self.marker()
        process, _ = self.start_ready('Serial', env={'KILN_TEST_MARKER': marker})
        process.request('a', '/wait', {})
        process.expect('log')
        process.proc.send_signal(signal.SIGTERM)
        process.wait_stderr('stopping (signal')
        process.send({'type': 'cancel', 'request_id': 'a'})
        header, data = process.expect('result')
        self.assertEqual(json.loads(data), {'cancelled': True})
        self.assertEqual(process.wait(), 0, process.stderr())
        self.assertTrue(os.path.exists(marker), 'teardown did not run')

    def test_setup_raises(self):
        process = self.start(self.apps, 'BrokenSetup')
        header, _ = process.expect('setup_failed')
        self.assertEqual(header['error'], 'RuntimeError: no weights here')
        self.assertIn('Traceback', header['traceback'])
        self.assertTrue(process.stdout_ended())
        self.assertEqual(process.wait(), 3)
        self.assertIn('no weights here', process.stderr())

    def test_setup_exits(self):
        process = self.start(self.apps, 'ExitsInSetup')
        header, _ = process.expect('setup_failed')
        self.assertEqual(header['error'], 'SystemExit: 7')
        self.assertEqual(process.wait(), 3)

    def test_app_that_does_not_load(self):
        broken = os.path.join(self.tmp, 'broken_app.py')
        with open(broken, 'w') as f:
            f.write('import kiln\nraise ImportError("no module named torch, say")\n')
        two_args = os.path.join(self.tmp, 'two_args.py')
        with open(two_args, 'w') as f:
            f.write('import kiln\nclass A(kiln.App):\n    @kiln.endpoint("/")\n'
                    '    def run(self, a, b):\n        return {}\n')
        cases = {
            'import raises': ([broken, 'App'], 'ImportError: no module named torch, say'),
            'handler of two arguments': ([two_args], 'run() must take one argument'),
            'no such file': ([os.path.join(self.tmp, 'nope.py'), 'App'], 'no such file'),
            'no such class': ([self.apps, 'Nope'], 'defines no Nope'),
            'not an app': ([self.apps, 'Point'], 'not a kiln.App subclass'),
            'which class': ([self.apps], 'defines 5 kiln.App classes'),
        }
        for name, (args, expected) in cases.items():
            with self.subTest(name):
                process = self.start(*args)
                header, _ = process.expect('setup_failed')
                self.assertIn(expected, header['error'])
                self.assertEqual(process.wait(), 3)

    def test_bad_usage(self):
        process = self.start('--help')
        self.assertEqual(process.wait(), 2)
        self.assertIn('usage', process.stderr())

    def test_malformed_frames_exit_2(self):
        good = _protocol.encode({'type': 'cancel', 'request_id': 'x'})
        cases = {
            'header over the limit': b'\xff\xff\xff\xff',
            'header not JSON': struct.pack('>I', 5) + b'{"typ' + struct.pack('>I', 0),
            'no type': struct.pack('>I', 18) + b'{"kind":"request"}' + struct.pack('>I', 0),
            'body over the limit': struct.pack('>I', 15) + b'{"type":"stop"}'
            + struct.pack('>I', _protocol.BODY_MAX_BYTES + 1),
            'request without a path': _protocol.encode({'type': 'request', 'request_id': 'r'}),
            'cut short, then the end': good[:-3],
        }
        for name, garbage in cases.items():
            with self.subTest(name):
                process, _ = self.start_ready('Serial')
                process.send_raw(garbage)
                process.close_stdin()
                self.assertEqual(process.wait(), 2, process.stderr())
                self.assertIn('protocol error', process.stderr())

    def test_duplicate_request_id_exits_2(self):
        process, _ = self.start_ready('Serial')
        process.request('same', '/wait', {})
        process.expect('log')
        process.request('same', '/wait', {})
        self.assertEqual(process.wait(), 2)
        self.assertIn('already being served', process.stderr())


class RequestsTest(ProcessTestCase):
    """One Misc process, started per test (cheap: ~0.1 s)."""

    def setUp(self):
        self.process, _ = self.start_ready('Misc')

    def test_dataclass_in_and_out(self):
        frames, result, data = self.process.call(
            '/', {'name': 'tri', 'scale': 2, 'points': [{'x': 1, 'y': 2}, {'x': 3}],
                  'unknown': 'ignored'})
        self.assertEqual(frames, [])
        self.assertJSON(result, data, 200, {'name': 'TRI', 'count': 2, 'tags': None,
                                             'scaled': [{'x': 2.0, 'y': 4.0},
                                                        {'x': 6.0, 'y': 0.0}]})
        self.assertEqual(result['request_id'], 'r-1')
        self.assertNotIn('error', result)

    def test_input_that_does_not_fit_is_422(self):
        cases = {
            'missing field': ({'name': 'x'}, 'request.points: required'),
            'wrong type': ({'name': 'x', 'points': [{'x': 1}, {'x': 'two'}]},
                           'request.points[1].x: expected an integer'),
            'not an object': ([1, 2], 'request: expected an object'),
            'bad optional': ({'name': 'x', 'points': [], 'tags': 'a'}, 'request.tags'),
        }
        for name, (body, expected) in cases.items():
            with self.subTest(name):
                _, result, data = self.process.call('/', body, request_id=name)
                value = self.assertJSON(result, data, 422)
                self.assertEqual(value['error_type'], 'bad_request')
                self.assertIn(expected, value['detail'])
                self.assertEqual(result['error_type'], 'bad_request')

    def test_bad_json_is_422(self):
        _, result, data = self.process.call('/dict', b'{"a": 1,')
        value = self.assertJSON(result, data, 422)
        self.assertEqual(value['error_type'], 'bad_request')
        self.assertIn('not valid JSON', value['detail'])

    def test_other_arguments(self):
        _, result, data = self.process.call('/dict', {'b': 1, 'a': 2})
        self.assertJSON(result, data, 200, {'keys': ['a', 'b']})
        _, result, data = self.process.call('/dict', b'')       # a bare POST is {}
        self.assertJSON(result, data, 200, {'keys': []})
        _, result, data = self.process.call('/none', b'ignored')
        self.assertJSON(result, data, 200, [1, 'two', None])
        _, result, data = self.process.call('/raw', b'\x00\x01binary', content_type='')
        self.assertEqual((result['status'], result['content_type'], data),
                         (201, 'application/x-reversed', b'yranib\x01\x00'))

    def test_unknown_path_is_404(self):
        _, result, data = self.process.call('/nope', {})
        value = self.assertJSON(result, data, 404)
        self.assertEqual(value['error_type'], 'not_found')
        self.assertIn('/nope', value['detail'])

    def test_handler_exception_is_500_with_traceback_log(self):
        frames, result, data = self.process.call('/boom', {})
        self.assertJSON(result, data, 500, {'detail': 'ValueError: boom',
                                             'error_type': 'runner_server_error'})
        self.assertEqual((result['error'], result['error_type']),
                         ('ValueError: boom', 'runner_server_error'))
        self.assertEqual(len(frames), 1, frames)
        header, _ = frames[0]
        self.assertEqual((header['type'], header['level'], header['request_id']),
                         ('log', 'ERROR', 'r-1'))
        self.assertIn('Traceback (most recent call last)', header['message'])
        self.assertIn('ValueError: boom', header['message'])
        #  And it keeps serving.
        _, result, _ = self.process.call('/none', request_id='r-2')
        self.assertEqual(result['status'], 200)

    def test_huge_error_still_answers(self):
        #  The header stays within its limit; the body keeps the detail.
        frames, result, data = self.process.call('/huge-error', {})
        value = self.assertJSON(result, data, 500)
        self.assertEqual(len(value['detail']), len('ValueError: ') + 2000000)
        self.assertLess(len(result['error']), 70000)
        self.assertTrue(result['error'].endswith('[cut]'))
        self.assertEqual(frames[0][0]['level'], 'ERROR')

    def test_http_exception(self):
        _, result, data = self.process.call('/teapot', {})
        self.assertJSON(result, data, 418, {'detail': 'short and stout', 'error_type': 'teapot'})
        self.assertEqual((result['error'], result['error_type']), ('short and stout', 'teapot'))

    def test_answer_that_is_not_json_is_500(self):
        _, result, data = self.process.call('/bad-return', {})
        value = self.assertJSON(result, data, 500)
        self.assertEqual(value['error_type'], 'runner_server_error')
        self.assertIn('result.s: a set is not JSON-able', value['detail'])

    def test_file_frame_before_result(self):
        frames, result, data = self.process.call('/file', {}, request_id='f-1')
        self.assertEqual(len(frames), 1, frames)
        header, body = frames[0]
        self.assertEqual(body, b'hello file')
        self.assertEqual((header['type'], header['request_id'], header['content_type'],
                          header['file_name']), ('file', 'f-1', 'text/plain', 'hello.txt'))
        self.assertRegex(header['id'], UUID4_RE)
        self.assertJSON(result, data, 200, {'file': {
            'url': '%s/files/%s' % (PUBLIC_URL, header['id']), 'content_type': 'text/plain',
            'file_name': 'hello.txt', 'file_size': 10}})

    def test_prints_and_logging_become_request_logs(self):
        frames, result, data = self.process.call('/print', {})
        self.assertJSON(result, data, 200, {'printed': True})
        lines = [(h['type'], h['request_id'], h['level'], h['message']) for h, _ in frames]
        self.assertEqual(lines, [('log', 'r-1', 'INFO', 'line one'),
                                 ('log', 'r-1', 'INFO', 'line two'),
                                 ('log', 'r-1', 'WARN', 'careful'),
                                 ('log', 'r-1', 'INFO', 'no newline')])
        for header, _ in frames:
            self.assertIsInstance(header['timestamp'], int)
        #  What bypasses sys.stdout goes to stderr, never into the frames.
        self.process.close_stdin()
        self.assertEqual(self.process.wait(), 0)
        stderr = self.process.stderr()
        for text in ('printed at import', 'raw bytes on fd 1 at import', 'printed in setup',
                     'raw fd 1 in handler'):
            self.assertIn(text, stderr)

    def test_async_handler(self):
        frames, result, data = self.process.call('/async', {})
        self.assertJSON(result, data, 200, {'async': True})
        self.assertEqual([(h['level'], h['message']) for h, _ in frames],
                         [('WARN', 'from a coroutine')])

    def test_cancel_reaches_the_handler(self):
        self.process.send({'type': 'cancel', 'request_id': 'not-running'})     # ignored
        self.process.request('c-1', '/wait', {})
        header, _ = self.process.expect('log')
        self.assertEqual((header['request_id'], header['message']), ('c-1', 'waiting for cancel'))
        self.process.send({'type': 'cancel', 'request_id': 'c-1'})
        header, data = self.process.expect('result')
        self.assertEqual((header['request_id'], header['status']), ('c-1', 200))
        self.assertEqual(json.loads(data), {'cancelled': True})
        self.process.send({'type': 'cancel', 'request_id': 'c-1'})             # too late: ignored
        _, result, _ = self.process.call('/none', request_id='after')
        self.assertEqual(result['status'], 200)

    def test_two_requests_in_parallel(self):
        #  Each waits on a barrier of two: both answer 200 only if they
        #  ran at the same time (max_multiplexing=2).
        started = time.monotonic()
        self.process.request('p-1', '/together', {})
        self.process.request('p-2', '/together', {})
        results = self.process.until_results('p-1', 'p-2')
        for rid in ('p-1', 'p-2'):
            header, data = results[rid][-1]
            self.assertJSON(header, data, 200, {'overlapped': True})
        self.assertLess(time.monotonic() - started, 5)

    def test_unknown_frame_type_is_ignored(self):
        self.process.send({'type': 'ping-from-the-future'})
        _, result, _ = self.process.call('/none')
        self.assertEqual(result['status'], 200)
        self.process.wait_stderr("ignored a 'ping-from-the-future' frame")


class HelloExampleTest(ProcessTestCase):
    """examples/python/hello.py: setup state, a dataclass in and out, a log
    line and an image."""

    def test_describe(self):
        process = self.start(HELLO_APP + '::Hello', env={'KILN_DESCRIBE': '1'})
        header, _ = process.expect('describe')
        self.assertEqual(header['manifest']['name'], 'hello')
        self.assertEqual(header['manifest']['endpoints'], ['/'])
        self.assertEqual(process.wait(), 0)

    def test_greets_with_setup_state(self):
        process = self.start(HELLO_APP)        # its only App: no class name needed
        process.expect('ready')
        for call in (1, 2):
            frames, result, data = process.call('/', {'name': 'kiln', 'excited': call == 2},
                                                request_id='h-%d' % call)
            self.assertEqual([h['type'] for h, _ in frames], ['log', 'file'])
            log, _ = frames[0]
            self.assertEqual((log['request_id'], log['level'], log['message']),
                             ('h-%d' % call, 'INFO', 'greeting kiln (call %d of this runner)' % call))
            file_header, png = frames[1]
            self.assertEqual(file_header['request_id'], 'h-%d' % call)
            self.assertEqual(png[:8], b'\x89PNG\r\n\x1a\n')
            self.assertEqual(struct.unpack('>II', png[16:24]), (8, 8))
            value = self.assertJSON(result, data, 200)
            self.assertEqual(value['greeting'], 'Hello, kiln!' if call == 2 else 'Hello, kiln.')
            self.assertEqual(value['served'], call)
            self.assertEqual(value['badge'], {
                'url': '%s/files/%s' % (PUBLIC_URL, file_header['id']),
                'content_type': 'image/png', 'file_name': 'badge.png',
                'file_size': len(png), 'width': 8, 'height': 8})
        _, result, data = process.call('/', b'', request_id='defaults')
        self.assertEqual(json.loads(data)['greeting'], 'Hello, world.')
        process.send({'type': 'stop'})
        self.assertEqual(process.wait(), 0)


#  The app of fal's introduction (the seed), with only its imports changed
#  and a stand-in for the diffusers pipeline, which is not installed here.
SEED_APP = textwrap.dedent('''
    import kiln as fal
    from pydantic import BaseModel
    from kiln import Image

    import struct, zlib


    class _FakePilImage:
        size = (4, 2)

        def save(self, stream, format):
            def chunk(kind, data):
                return (struct.pack(">I", len(data)) + kind + data
                        + struct.pack(">I", zlib.crc32(kind + data)))
            stream.write(b"\\x89PNG\\r\\n\\x1a\\n"
                         + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 8, 0, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(b"\\0" * 10)) + chunk(b"IEND", b""))


    class _FakePipeline:
        def __call__(self, prompt, num_inference_steps, guidance_scale):
            return type("Result", (), {"images": [_FakePilImage()]})


    class Input(BaseModel):
        prompt: str


    class Output(BaseModel):
        image: Image


    class MyApp(fal.App, keep_alive=300):
        machine_type = "GPU-A100"
        requirements = [
            "diffusers==0.28.0",
            "torch==2.3.0",
            "accelerate",
            "transformers",
        ]

        def setup(self):
            self.pipe = _FakePipeline()

        @fal.endpoint("/")
        def run(self, request: Input) -> Output:
            result = self.pipe(request.prompt, num_inference_steps=7, guidance_scale=3)
            image = Image.from_pil(result.images[0])
            return Output(image=image)
''')


def _have_pydantic():
    try:
        import pydantic     # noqa: F401
        return True
    except ImportError:
        return False


@unittest.skipUnless(_have_pydantic(), 'pydantic is not installed (kiln does not need it)')
class SeedAppTest(ProcessTestCase):
    """fal's own example, pydantic models included, runs with only the
    import changed."""

    def setUp(self):
        self.seed = os.path.join(self.tmp, 'example.py')
        with open(self.seed, 'w') as f:
            f.write(SEED_APP)

    def test_describe(self):
        process = self.start(self.seed + '::MyApp', env={'KILN_DESCRIBE': '1'})
        header, _ = process.expect('describe')
        manifest = header['manifest']
        self.assertEqual((manifest['name'], manifest['machine_types'], manifest['keep_alive']),
                         ('my-app', ['GPU-A100'], 300))
        self.assertEqual(manifest['requirements'],
                         ['diffusers==0.28.0', 'torch==2.3.0', 'accelerate', 'transformers'])
        self.assertEqual(process.wait(), 0)

    def test_runs(self):
        process = self.start(self.seed + '::MyApp')
        process.expect('ready')
        frames, result, data = process.call('/', {'prompt': 'rhino'})
        self.assertEqual([h['type'] for h, _ in frames], ['file'])
        file_header, png = frames[0]
        self.assertJSON(result, data, 200, {'image': {
            'url': '%s/files/%s' % (PUBLIC_URL, file_header['id']),
            'content_type': 'image/png', 'file_name': file_header['file_name'],
            'file_size': len(png), 'width': 4, 'height': 2}})
        _, result, data = process.call('/', {'prompt': 3}, request_id='r-2')
        value = self.assertJSON(result, data, 422)
        self.assertIn('prompt', value['detail'])


class BareProcessAppTest(ProcessTestCase):
    """The app without the SDK in docs/PROCESS_APPS.md, run as written
    there: the spec's own example speaks the protocol."""

    def setUp(self):
        with open(PROCESS_APPS_DOC) as f:
            doc = f.read()
        section = doc.split('## A process app without the SDK', 1)[1]
        code = section.split('```python\n', 1)[1].split('```', 1)[0]
        self.bare = os.path.join(self.tmp, 'bare_app.py')
        with open(self.bare, 'w') as f:
            f.write(code)
        self.command = [sys.executable, self.bare]

    def test_describe(self):
        process = self.start(command=self.command, env={'KILN_DESCRIBE': '1'})
        header, _ = process.expect('describe')
        self.assertEqual(header['manifest']['name'], 'upper')
        self.assertEqual(process.wait(), 0)

    def test_serves_and_stops(self):
        process = self.start(command=self.command)
        process.expect('ready')
        frames, result, data = process.call('/', b'hello', content_type='text/plain')
        self.assertEqual([(h['type'], h['message']) for h, _ in frames], [('log', '5 bytes')])
        self.assertEqual((result['status'], result['content_type'], data),
                         (200, 'text/plain', b'HELLO'))
        _, result, data = process.call('/nope', b'', request_id='r-2')
        self.assertEqual((result['status'], json.loads(data)['error_type']), (404, 'not_found'))
        process.send({'type': 'stop'})
        self.assertEqual(process.wait(), 0)

    def test_protocol_error(self):
        process = self.start(command=self.command)
        process.expect('ready')
        process.send_raw(b'\xff\xff\xff\xff')
        self.assertEqual(process.wait(), 2)
        self.assertIn('protocol error', process.stderr())


if __name__ == '__main__':
    unittest.main(verbosity=2)
