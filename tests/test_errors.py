"""What callers get when something is wrong: bad routes and bodies, apps
that cannot be scheduled or fail to start, handlers that crash, and
garbage on the broker's ZeroMQ socket. Every error is JSON {detail,
error_type}, and nothing hangs or takes a process down."""

import json
import os
import socket
import subprocess
import time
import uuid

import kiln_harness
from kiln_harness import UUID4_RE, app_for_tests, example, program

MAX_BODY_BYTES = 1048576
#  The broker waits this long after it starts before it decides that no
#  worker offers a machine type (workers re-register after a restart).
BROKER_REGISTRATION_GRACE_S = 3.5
SCHEDULING_FAILURE_DEADLINE_S = 5.0
SETUP_FAILURE_TIMEOUT_S = 60


def mp_str(text):
    """A msgpack fixstr (for building frames by hand)."""
    data = text.encode()
    assert len(data) < 32
    return bytes([0xa0 | len(data)]) + data


def frame(msg_type, body):
    return (bytes([1, msg_type]) + body).hex()


class ErrorsTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_MAX_BODY_BYTES': str(MAX_BODY_BYTES)})
        cls.deploy_or_dump(example('echo'), 'local/echo')
        cls.deploy_or_dump(app_for_tests('gpuonly'), 'local/gpuonly')
        cls.deploy_or_dump(app_for_tests('badsetup'), 'local/badsetup')
        cls.deploy_or_dump(app_for_tests('crash'), 'local/crash')

    def echo_works(self, tag):
        status, _, obj = self.stack.call('/local/echo', {'tag': tag})
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['input'], {'tag': tag})

    # -- the gateway's own checks -----------------------------------------

    def test_unknown_app_is_404(self):
        status, headers, body = self.stack.http('POST', '/local/nope', {'a': 1})
        obj = self.assertJsonError(status, headers, body, 404, 'not_found')
        self.assertIn('local/nope', obj['detail'])

    def test_unknown_owner_is_404(self):
        status, headers, body = self.stack.http('POST', '/nobody/echo', {'a': 1})
        self.assertJsonError(status, headers, body, 404, 'not_found')

    def test_wrong_method_is_405(self):
        for method in ('GET', 'DELETE', 'PUT'):
            with self.subTest(method=method):
                status, headers, body = self.stack.http(method, '/local/echo')
                self.assertJsonError(status, headers, body, 405, 'method_not_allowed')
                self.assertIn('POST', headers.get('allow', ''))

    def test_body_that_is_not_json_is_422(self):
        for content_type in ('application/json', 'application/json; charset=utf-8'):
            with self.subTest(content_type=content_type):
                status, headers, body = self.stack.http(
                    'POST', '/local/echo', b'{"prompt": "rhino"',
                    headers={'Content-Type': content_type})
                self.assertJsonError(status, headers, body, 422, 'bad_request')

    def test_body_that_is_not_json_passes_with_another_content_type(self):
        status, _, body = self.stack.http('POST', '/local/echo', b'plain words',
                                          headers={'Content-Type': 'text/plain'})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)['input'], 'plain words')

    def test_body_over_the_limit_is_413(self):
        big = b'x' * (MAX_BODY_BYTES * 3 // 2)
        status, headers, body = self.stack.http(
            'POST', '/local/echo', big, headers={'Content-Type': 'application/octet-stream'})
        self.assertJsonError(status, headers, body, 413, 'payload_too_large')

    def test_body_under_the_limit_is_served(self):
        text = 'y' * (MAX_BODY_BYTES - 4096)
        status, _, obj = self.stack.call('/local/echo', {'text': text})
        self.assertEqual(status, 200)
        self.assertEqual(obj['input'], {'text': text})

    # -- scheduling and runner failures -----------------------------------

    def test_machine_type_no_worker_offers_is_503(self):
        wait = BROKER_REGISTRATION_GRACE_S - self.stack.uptime('broker')
        if wait > 0:
            time.sleep(wait)    # a documented grace period, not a condition to poll
        started = time.monotonic()
        status, headers, body = self.stack.http('POST', '/local/gpuonly', {'a': 1},
                                                timeout=30)
        elapsed = time.monotonic() - started
        obj = self.assertJsonError(status, headers, body, 503, 'runner_scheduling_failure')
        self.assertIn('GPU-H100', obj['detail'])
        self.assertLess(elapsed, SCHEDULING_FAILURE_DEADLINE_S)
        self.assertRegex(headers.get('x-fal-request-id', ''), UUID4_RE)

    def test_setup_failure_ends_the_call_with_an_error(self):
        status, headers, body = self.stack.http('POST', '/local/badsetup', {'a': 1},
                                                timeout=SETUP_FAILURE_TIMEOUT_S)
        self.assertGreaterEqual(status, 500, body)
        self.assertLess(status, 600, body)
        obj = json.loads(body)
        self.assertIsInstance(obj.get('detail'), str, obj)
        self.assertIsInstance(obj.get('error_type'), str, obj)
        self.echo_works('after badsetup')

    def test_crashing_handler_is_503_runner_disconnected(self):
        status, headers, body = self.stack.http('POST', '/local/crash', {'a': 1}, timeout=60)
        self.assertJsonError(status, headers, body, 503, 'runner_disconnected')
        self.echo_works('after crash')
        self.assertTrue(self.stack.running('worker'), 'the worker died with its runner')

    # -- garbage on the broker's socket -----------------------------------

    def zsend(self, *frames, identity=None, recv_ms=0):
        args = [program('zsend')]
        if identity:
            args += ['--identity', identity]
        if recv_ms:
            args += ['--recv-ms', str(recv_ms)]
        args.append(self.stack.env['KILN_BROKER_ENDPOINT'])
        args += [f if f == 'empty' or ':' in f else 'hex:' + f for f in frames]
        result = subprocess.run(args, capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.split('\n')[:-1]

    def test_malformed_frames_are_dropped(self):
        log_path = self.stack.log_path('broker')
        log_size = os.path.getsize(log_path)
        request_id = str(uuid.uuid4())
        bad = [
            ['empty'],
            ['01'],
            ['0103'],                                           # no map at all
            ['0103ff'],                                         # version ok, not a map
            ['090380'],                                         # unknown protocol version
            ['016380'],                                         # unknown message type
            [frame(2, b'\x85' + mp_str('runner_id') + mp_str('r-x'))],   # map cut short
            [frame(8, b'\x93\x01\x02\x03')],                    # an array, not a map
            [frame(8, b'\x81' + mp_str('body') + b'\xdb\xff\xff\xff\xff')],  # 4 GiB string
            [frame(8, b'\x82' + mp_str('request_id') + b'\xc0'
                   + mp_str('status') + mp_str('abc'))],        # wrong field types
            [frame(8, b'\x81' + mp_str('files') + b'\xdd\xff\xff\xff\xff')],  # huge array
            [frame(8, b'\x81' + mp_str('status') + b'\xcc\xc8')],  # RESULT without request_id
            [frame(8, b'\x82' + mp_str('request_id') + b'\xd9\x24' + request_id.encode()
                   + mp_str('status') + b'\xcc\xc8')],          # RESULT nobody asked for
            ['010380', '010380'],                               # two frames in one message
            [frame(2, b'\x81' + mp_str('runner_id'))],         # a key without its value
        ]
        for frames in bad:
            self.zsend(*frames, identity='bad-peer-%s' % uuid.uuid4().hex[:8])

        #  Garbage below ZeroMQ: not even a ZMTP greeting.
        with socket.create_connection(('127.0.0.1', self.stack.broker_port), timeout=5) as s:
            s.sendall(b'GET / HTTP/1.0\r\n\r\n' + os.urandom(256))
        with socket.create_connection(('127.0.0.1', self.stack.broker_port), timeout=5) as s:
            #  A ZMTP 3.0 signature, then a truncated greeting.
            s.sendall(b'\xff' + b'\0' * 8 + b'\x7f\x03\x00NULL')

        #  Still serving: a peer it does not know is told to say hello again...
        replies = self.zsend(frame(3, b'\x80'), identity='stranger', recv_ms=3000)
        self.assertTrue(any(r.startswith('010a') for r in replies),
                        'no DISCONNECT for an unknown peer; replies %r' % replies)
        #  ...and calls still go through.
        self.assertTrue(self.stack.running('broker'), 'the broker died')
        self.echo_works('after garbage')

        with open(log_path, 'rb') as f:
            f.seek(log_size)
            new_log = f.read().decode('utf-8', 'replace')
        warnings = [l for l in new_log.splitlines() if ' WARN ' in l or ' ERROR ' in l]
        self.assertGreaterEqual(len(warnings), len(bad),
                                'the broker did not log each malformed message:\n' + new_log)


if __name__ == '__main__':
    kiln_harness.main()
