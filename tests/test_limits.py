"""Limits (docs/SECURITY.md, Limits): body size, header size, URL length,
queue length per app and requests per second per key. Over a limit is a
4xx {detail, error_type} that names the limit, and never slows a caller
within it. Also the tampered artifact: a worker refuses bytes that do not
hash to the artifact's name, and loads nothing."""

import http.client
import json
import os
import socket
import threading
import time
import uuid

import kiln_harness
from kiln_harness import app_for_tests, example, wait_until

MAX_BODY_BYTES = 65536
#  gateway.c: HTTP_MAX_HEADERS_BYTES, HTTP_MAX_QUERY_BYTES; route.h:
#  KILN_ROUTE_RAW_PATH_MAX
MAX_HEADERS_BYTES = 64 * 1024
MAX_QUERY_BYTES = 4096
MAX_PATH_BYTES = 4096
QUEUE_LIMIT = 2
RATE_RPS = 5
#  A call within the limits while others are refused must not take
#  longer than this (an echo on a warm runner takes milliseconds).
NORMAL_CALL_MAX_S = 2.0
#  Three failed starts, with the broker's backoff between them.
FAILED_START_TIMEOUT_S = 60


def raw_http(port, data, timeout=10.0):
    """Sends raw bytes; returns (status or None when the connection was
    closed without an answer, the whole answer)."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
        answer = b''.join(chunks)
    finally:
        sock.close()
    if not answer.startswith(b'HTTP/1.'):
        return None, answer
    return int(answer.split(b' ', 2)[1]), answer


def key_header(key_id=None):
    """An Authorization header for a made-up key: with keys off the
    gateway does not check it, but rates are counted by its id."""
    return {'Authorization': 'Key %s:%s' % (key_id or uuid.uuid4(), 'ab' * 32)}


class NormalCaller(threading.Thread):
    """Calls echo every interval_s until stopped; records each (status,
    seconds)."""

    def __init__(self, stack, headers=None, interval_s=0.1):
        super().__init__(daemon=True)
        self.stack, self.headers, self.interval_s = stack, headers or {}, interval_s
        self.results = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                status, _, _ = self.stack.http('POST', '/local/echo', {'n': len(self.results)},
                                               headers=self.headers, timeout=10)
            except OSError as e:
                status = repr(e)
            self.results.append((status, time.monotonic() - started))
            self.stopping.wait(self.interval_s)

    def stop(self):
        self.stopping.set()
        self.join(15)
        return self.results


class LimitsTestCase(kiln_harness.KilnTestCase):
    """What both test classes check after a refusal."""

    def normal_caller_ok(self, results):
        self.assertTrue(results, 'the normal caller made no call')
        for status, seconds in results:
            self.assertEqual(status, 200, results)
            self.assertLess(seconds, NORMAL_CALL_MAX_S, results)

    def echo_works(self):
        status, _, obj = self.stack.call('/local/echo', {'ok': 1})
        self.assertEqual(status, 200, obj)


class LimitsTest(LimitsTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_MAX_BODY_BYTES': str(MAX_BODY_BYTES)})
        cls.deploy_or_dump(example('echo'), 'local/echo')
        cls.deploy_or_dump(app_for_tests('slowlog'), 'local/slowlog')
        #  The same artifact with a queue bound, through the API's deploy
        #  (fal's spelling, which the manifest takes as max_queue_length)
        status, _, body = cls.stack.http('GET', '/v1/apps/local/slowlog')
        app = json.loads(body)
        manifest = dict(app['manifest'], fal_max_queue_length=QUEUE_LIMIT)
        status, _, body = cls.stack.http('POST', '/v1/apps', {
            'name': 'local/bounded', 'artifact': app['artifact'], 'manifest': manifest})
        if status not in (200, 201):
            cls.stack.dump_logs()
            raise AssertionError('deploy of local/bounded: %d %s' % (status, body[:300]))

    # -- body -------------------------------------------------------------

    def test_body_over_the_limit_is_413_json(self):
        big = b'x' * (MAX_BODY_BYTES + 1)
        for path in ('/local/echo', '/queue/local/echo'):
            status, headers, body = self.stack.http(
                'POST', path, big, headers={'Content-Type': 'application/octet-stream'})
            obj = self.assertJsonError(status, headers, body, 413, 'payload_too_large')
            self.assertIn(str(MAX_BODY_BYTES), obj['detail'])
        self.echo_works()

    def test_body_far_over_the_limit_is_refused_by_evhttp(self):
        #  Past 4× the limit evhttp answers on its own, before we see it:
        #  still a 413, but not JSON (docs/SECURITY.md says so)
        big = b'x' * (MAX_BODY_BYTES * 5)
        status, _ = raw_http(self.stack.http_port,
                             b'POST /local/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n'
                             b'Content-Type: application/octet-stream\r\n\r\n' % len(big) + big)
        self.assertEqual(status, 413)
        self.echo_works()

    # -- headers ----------------------------------------------------------

    def test_headers_under_the_limit_are_served(self):
        status, _, _ = self.stack.http('POST', '/local/echo', {'a': 1},
                                       headers={'X-Big': 'h' * (MAX_HEADERS_BYTES // 2)})
        self.assertEqual(status, 200)

    def test_headers_over_the_limit_are_refused(self):
        request = (b'POST /local/echo HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'h' * (MAX_HEADERS_BYTES + 1)
                   + b'\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}')
        status, answer = raw_http(self.stack.http_port, request)
        #  evhttp's own answer (docs/SECURITY.md): 400 in HTML, connection
        #  closed; never served, never a crash
        self.assertEqual(status, 400, answer[:200])
        self.assertIn(b'Connection: close', answer)
        self.echo_works()

    # -- URL --------------------------------------------------------------

    def test_long_path_is_414_json(self):
        path = '/local/echo/' + 'p' * MAX_PATH_BYTES
        status, headers, body = self.stack.http('POST', path, {'a': 1})
        obj = self.assertJsonError(status, headers, body, 414, 'uri_too_long')
        self.assertIn(str(MAX_PATH_BYTES), obj['detail'])
        self.echo_works()

    def test_long_query_is_414_json(self):
        path = '/queue/local/echo?fal_webhook=http://example.com/' + 'q' * MAX_QUERY_BYTES
        status, headers, body = self.stack.http('POST', path, {'a': 1})
        obj = self.assertJsonError(status, headers, body, 414, 'uri_too_long')
        self.assertIn(str(MAX_QUERY_BYTES), obj['detail'])
        #  Within the bound: served (the webhook is refused for what it is)
        status, _, _ = self.stack.http('GET', '/health?' + 'q' * (MAX_QUERY_BYTES - 10))
        self.assertEqual(status, 200)

    def test_request_line_past_evhttp_limit_is_refused(self):
        status, answer = raw_http(self.stack.http_port,
                                  b'GET /health?' + b'q' * (MAX_HEADERS_BYTES + 10)
                                  + b' HTTP/1.1\r\nHost: x\r\n\r\n')
        self.assertEqual(status, 400, answer[:200])
        self.echo_works()

    # -- queue length -----------------------------------------------------

    def test_queue_length_per_app_is_429(self):
        app = 'local/bounded'
        normal = NormalCaller(self.stack)
        #  Hold the one runner, then fill the queue to its bound
        holder = self.stack.queue_submit('/' + app, {'lines': 40, 'interval_ms': 100})[2]
        self.stack.wait_state(app, holder['request_id'], 'IN_PROGRESS', timeout=60)
        normal.start()
        queued = []
        for _ in range(QUEUE_LIMIT):
            status, _, obj = self.stack.queue_submit('/' + app, {'lines': 1})
            self.assertEqual(status, 200, obj)
            queued.append(obj['request_id'])
        refused = 0
        for path in ('/queue/' + app, '/' + app):
            for _ in range(5):
                status, headers, body = self.stack.http('POST', path, {'lines': 1})
                obj = self.assertJsonError(status, headers, body, 429, 'queue_full')
                self.assertIn('max_queue_length = %d' % QUEUE_LIMIT, obj['detail'])
                self.assertIn(app, obj['detail'])
                refused += 1
        with self.stack.redis() as redis:
            self.assertEqual(redis.command('ZCARD', 'kiln:queue:' + app), QUEUE_LIMIT)
        self.normal_caller_ok(normal.stop())
        #  Another app is not bounded by it
        self.echo_works()
        #  Cancelling one makes room again
        status, _, _ = self.stack.http('PUT', '/queue/%s/requests/%s/cancel' % (app, queued[0]))
        self.assertEqual(status, 202)
        status, _, obj = self.stack.queue_submit('/' + app, {'lines': 1})
        self.assertEqual(status, 200, obj)
        self.stack.http('PUT', '/queue/%s/requests/%s/cancel' % (app, holder['request_id']))

    def test_deploy_max_queue_length_option(self):
        #  A native app's descriptor has no max_queue_length: kiln deploy
        #  --max-queue-length sets it
        app = 'local/bounded-cli'
        result = self.stack.kiln('deploy', app_for_tests('slowlog'), '--name', app,
                                 '--max-queue-length', '1')
        self.assertEqual(result.returncode, 0, result.stderr)
        manifest = json.loads(self.stack.http('GET', '/v1/apps/' + app)[2])['manifest']
        self.assertEqual(manifest['max_queue_length'], 1)
        #  The one runner busy, the first submit waits and the second is refused
        holder = self.stack.queue_submit('/' + app, {'lines': 40, 'interval_ms': 100})[2]
        self.stack.wait_state(app, holder['request_id'], 'IN_PROGRESS', timeout=60)
        status, _, first = self.stack.queue_submit('/' + app, {'lines': 1})
        self.assertEqual(status, 200, first)
        status, headers, body = self.stack.http('POST', '/queue/' + app, {'lines': 1})
        obj = self.assertJsonError(status, headers, body, 429, 'queue_full')
        self.assertIn('max_queue_length = 1', obj['detail'])
        for request_id in (first['request_id'], holder['request_id']):
            self.stack.http('PUT', '/queue/%s/requests/%s/cancel' % (app, request_id))

    # -- the tampered artifact --------------------------------------------

    def test_tampered_artifact_is_refused(self):
        #  An app this worker has never run, so nothing of it is cached
        app = 'local/tampered'
        self.stack.deploy(example('sleep'), app)
        status, _, body = self.stack.http('GET', '/v1/apps/' + app)
        sha = json.loads(body)['artifact']
        with self.stack.redis() as redis:
            self.assertEqual(redis.command('SET', 'kiln:artifact:' + sha,
                                           b'\x7fELF these are other bytes'), 'OK')
        status, _, obj = self.stack.queue_submit('/' + app, {'ms': 0})
        self.assertEqual(status, 200, obj)
        done = self.stack.wait_state(app, obj['request_id'], 'COMPLETED',
                                     timeout=FAILED_START_TIMEOUT_S)
        self.assertEqual(done['status'], 'COMPLETED')
        status, _, body = self.stack.http('GET', '/queue/%s/requests/%s' % (app, obj['request_id']))
        self.assertEqual(status, 503, body[:300])
        status, _, body = self.stack.http('GET', '/v1/apps/' + app)
        record = json.loads(body)
        self.assertIn('SHA-256', record.get('last_error') or '', record)
        self.assertIn(sha, record['last_error'])
        self.assertGreaterEqual(record.get('failed_starts', 0), 1, record)
        #  Nothing loaded: no runner, nothing cached under its name
        self.assertEqual(self.stack.runner_pids(app), [])
        cached = os.path.join(self.stack.state_dir, 'worker', 'artifacts', sha + '.so')
        self.assertFalse(os.path.exists(cached), cached)
        with open(self.stack.log_path('worker'), errors='replace') as f:
            self.assertIn('failed its SHA-256 check', f.read())


class RateLimitTest(LimitsTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_RATE_LIMIT_RPS': str(RATE_RPS),
                             'KILN_RATE_LIMIT_BURST': str(RATE_RPS)})
        cls.deploy_or_dump(example('echo'), 'local/echo')

    def flood(self, headers, count):
        """count calls as fast as they go; their (status, headers, body)."""
        answers = []
        for _ in range(count):
            answers.append(self.stack.http('GET', '/v1/apps/local/echo', headers=headers))
        return answers

    def test_a_key_over_its_rate_is_429_and_others_go_on(self):
        time.sleep(1.2)                     # the deploy's tokens come back
        normal = NormalCaller(self.stack, headers=key_header(), interval_s=0.3)
        normal.start()
        answers = self.flood(key_header(), 4 * RATE_RPS)
        results = normal.stop()
        refused = [a for a in answers if a[0] == 429]
        self.assertTrue(refused, [a[0] for a in answers])
        self.assertTrue(any(a[0] == 200 for a in answers))
        status, headers, body = refused[0]
        obj = self.assertJsonError(status, headers, body, 429, 'rate_limited')
        self.assertIn('%d requests per second' % RATE_RPS, obj['detail'])
        self.assertGreaterEqual(int(headers['retry-after']), 1)
        self.normal_caller_ok(results)

    def test_without_a_key_the_client_address_counts(self):
        time.sleep(1.2)
        answers = self.flood({}, 4 * RATE_RPS)
        self.assertIn(429, [a[0] for a in answers])
        #  Health stays open whatever the rate
        for _ in range(3 * RATE_RPS):
            status, _, _ = self.stack.http('GET', '/health')
            self.assertEqual(status, 200)
        #  And the bucket fills again
        time.sleep(1.2)
        status, _, _ = self.stack.http('GET', '/v1/apps/local/echo')
        self.assertEqual(status, 200)


if __name__ == '__main__':
    kiln_harness.main()
