"""The queue API end to end (issue 3): submit, status with exact queue
positions and logs, priorities, the status stream, result replay and
retention, and a sync caller that goes away.

The stack has one CPU slot (worker --slots CPU=1) and the slowlog test
app (tests/apps/slowlog.c, max_concurrency 1), so one request at a time
runs and the others queue behind it in a known order. Its public URL
(KILN_PUBLIC_URL) differs from the address it binds, to show that the
URLs it hands out come from the public one."""

import json
import socket
import time
import uuid

import kiln_harness
from kiln_harness import UUID4_RE, app_for_tests, wait_until

PUBLIC_URL = 'http://kiln.example:9999'
APP = 'local/slowlog'
OTHER_APP = 'local/other'
#  A status or result answer comes at once: well under this (seconds).
PROMPT_ANSWER_S = 1.0


def local_path(url):
    """The path of a URL kiln handed out under PUBLIC_URL."""
    assert url.startswith(PUBLIC_URL + '/'), url
    return url[len(PUBLIC_URL):]


class QueueTest(kiln_harness.QueueTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_PUBLIC_URL': PUBLIC_URL}, worker_args=['--slots', 'CPU=1'])
        cls.deploy_or_dump(app_for_tests('slowlog'), APP)
        cls.deploy_or_dump(app_for_tests('slowlog'), OTHER_APP)

    # -- submit ------------------------------------------------------------

    def test_submit_answers_at_once_with_public_urls_without_the_subpath(self):
        started = time.monotonic()
        status, headers, obj = self.stack.queue_submit(
            '/%s/raw' % APP, 'hello, queue', headers={'Content-Type': 'text/plain'})
        self.assertLess(time.monotonic() - started, PROMPT_ANSWER_S)
        self.assertEqual(status, 200, obj)
        self.assertTrue(headers.get('content-type', '').startswith('application/json'))
        request_id = obj['request_id']
        self.assertRegex(request_id, UUID4_RE)
        base = '%s/queue/%s/requests/%s' % (PUBLIC_URL, APP, request_id)
        self.assertEqual(obj['response_url'], base)
        self.assertEqual(obj['status_url'], base + '/status')
        self.assertEqual(obj['cancel_url'], base + '/cancel')
        self.assertIsInstance(obj['queue_position'], int)
        self.assertGreaterEqual(obj['queue_position'], 0)

        #  The URLs work (under the bind address) and the subpath ran
        done = self.stack.http('GET', local_path(obj['status_url']))
        self.assertIn(done[0], (200, 202), done)
        self.wait_completed(request_id)
        status, headers, body = self.stack.http('GET', local_path(obj['response_url']))
        self.assertEqual((status, body), (201, b'hello, queue'))
        self.assertTrue(headers.get('content-type', '').startswith('text/plain'), headers)

    def test_submit_to_an_unknown_app_is_404(self):
        status, headers, body = self.stack.http('POST', '/queue/local/nope', {})
        self.assertJsonError(status, headers, body, 404)

    def test_no_retry_header_is_recorded(self):
        request_id = self.submit({'lines': 1}, headers={'X-Fal-No-Retry': '1'})['request_id']
        self.assertEqual(self.stack.record(request_id).get('no_retry'), '1')
        plain = self.submit({'lines': 1})['request_id']
        self.assertIn(self.stack.record(plain).get('no_retry'), ('0', None))
        self.wait_completed(request_id, plain)

    # -- status ------------------------------------------------------------

    def test_queue_positions_count_down_as_requests_start(self):
        head = self.hold_the_runner(lines=8, interval_ms=120)
        queued = [self.submit({'lines': 3, 'interval_ms': 150}) for _ in range(3)]
        self.assertEqual([q['queue_position'] for q in queued], [0, 1, 2])
        for i, q in enumerate(queued):
            status, obj = self.status(q['request_id'])
            self.assertEqual(status, 202, obj)
            self.assertEqual(obj['status'], 'IN_QUEUE', obj)
            self.assertEqual(obj['queue_position'], i, obj)
            self.assertEqual(obj['response_url'], q['response_url'])

        #  Watch the last one from the back of the queue to its end
        last = queued[2]['request_id']
        seen = []               # (state, position, HTTP status), changes only
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, obj = self.status(last)
            self.assertIsNotNone(obj, 'status answered %d, not JSON' % status)
            self.assertEqual(obj.get('response_url'), queued[2]['response_url'], obj)
            point = (obj['status'], obj.get('queue_position') if obj['status'] == 'IN_QUEUE'
                     else None, status)
            if not seen or seen[-1] != point:
                seen.append(point)
            if obj['status'] == 'COMPLETED':
                break
            time.sleep(0.02)
        self.assertEqual(seen, [('IN_QUEUE', 2, 202), ('IN_QUEUE', 1, 202), ('IN_QUEUE', 0, 202),
                                ('IN_PROGRESS', None, 202), ('COMPLETED', None, 200)])
        self.wait_completed(head, *[q['request_id'] for q in queued])

    def test_completed_status_has_metrics_and_response_url(self):
        request_id = self.submit({'lines': 3, 'interval_ms': 200})['request_id']
        running = self.wait_state(request_id, 'IN_PROGRESS')
        self.assertEqual(running['response_url'],
                         '%s/queue/%s/requests/%s' % (PUBLIC_URL, APP, request_id))
        self.wait_completed(request_id)
        status, obj = self.status(request_id)
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['status'], 'COMPLETED')
        self.assertEqual(obj['response_url'],
                         '%s/queue/%s/requests/%s' % (PUBLIC_URL, APP, request_id))
        inference_time = obj['metrics']['inference_time']
        self.assertIsInstance(inference_time, (int, float))
        #  Seconds: the handler took 0.4 s at least
        self.assertGreaterEqual(inference_time, 0.35, obj)
        self.assertLess(inference_time, 5, obj)
        self.assertNotIn('error', {k for k, v in obj.items() if v})

    def test_failed_request_status_has_error_and_error_type(self):
        request_id = self.submit(sub='/error')['request_id']
        self.wait_completed(request_id)
        status, obj = self.status(request_id)
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['status'], 'COMPLETED')
        self.assertIsInstance(obj.get('error'), str, obj)
        self.assertTrue(obj['error'], obj)
        self.assertEqual(obj.get('error_type'), 'runner_server_error', obj)
        self.assertTrue(obj['response_url'].startswith(PUBLIC_URL + '/'), obj)

    def test_logs_in_order_while_running_and_after(self):
        lines = 5
        request_id = self.submit({'lines': lines, 'interval_ms': 200})['request_id']
        expected = ['line %d of %d' % (i, lines) for i in range(1, lines + 1)]

        #  While it runs: a growing prefix of the lines
        def some_lines_while_running():
            status, obj = self.status(request_id, logs=True)
            if obj['status'] != 'IN_PROGRESS':
                return None
            messages = [line['message'] for line in obj['logs'] or []]
            self.assertEqual(messages, expected[:len(messages)], obj)
            return 0 < len(messages) < lines
        wait_until(some_lines_while_running, 15, interval=0.02,
                   what='some of the log lines while the request runs')

        self.wait_completed(request_id)
        status, obj = self.status(request_id, logs=True)
        self.assertEqual(status, 200, obj)
        self.assertEqual([line['message'] for line in obj['logs']], expected)
        for line in obj['logs']:
            self.assertEqual(line['level'], 'INFO', line)
            self.assertIsInstance(line['source'], str, line)
            self.assertIsInstance(line['timestamp'], str, line)
            self.assertTrue(line['timestamp'], line)
        stamps = [line['timestamp'] for line in obj['logs']]
        self.assertEqual(stamps, sorted(stamps), 'log lines out of time order')

        #  Without ?logs=1, no lines
        status, obj = self.status(request_id)
        self.assertFalse(obj.get('logs'), obj)

    def test_a_burst_of_lines_arrives_whole_and_in_order(self):
        #  Faster than they can leave one by one: the runner merges them
        #  (and makes the handler wait past 1,000 held), losing none.
        lines = 3000
        request_id = self.submit({'lines': lines, 'interval_ms': 0})['request_id']
        self.wait_completed(request_id)
        status, obj = self.status(request_id, logs=True)
        self.assertEqual(status, 200, obj)
        messages = [line['message'] for line in obj['logs'] or []]
        self.assertEqual(messages, ['line %d of %d' % (i, lines) for i in range(1, lines + 1)])

    def test_status_of_unknown_or_another_apps_request_is_404(self):
        status, headers, body = self.stack.http(
            'GET', '/queue/%s/requests/%s/status' % (APP, uuid.uuid4()))
        self.assertJsonError(status, headers, body, 404)
        request_id = self.submit({'lines': 1})['request_id']
        status, headers, body = self.stack.http(
            'GET', '/queue/%s/requests/%s/status' % (OTHER_APP, request_id))
        self.assertJsonError(status, headers, body, 404)
        self.wait_completed(request_id)

    # -- priorities --------------------------------------------------------

    def test_low_priority_queues_behind_normal(self):
        head = self.hold_the_runner(lines=6, interval_ms=100)
        first = self.submit({'lines': 1})
        low = self.submit({'lines': 1}, headers={'X-Fal-Queue-Priority': 'low'})
        second = self.submit({'lines': 1}, headers={'X-Fal-Queue-Priority': 'normal'})
        self.assertEqual(first['queue_position'], 0)
        self.assertEqual(low['queue_position'], 1)
        self.assertEqual(second['queue_position'], 1, 'normal did not go ahead of low')
        self.assertEqual(self.status(low['request_id'])[1]['queue_position'], 2)
        self.assertEqual(self.status(second['request_id'])[1]['queue_position'], 1)

        ids = [first['request_id'], second['request_id'], low['request_id']]
        self.wait_completed(head, *ids)
        started = [int(self.stack.record(i)['started_ms']) for i in ids]
        completed = [int(self.stack.record(i)['completed_ms']) for i in ids]
        self.assertEqual(started, sorted(started), 'start order is not normal, normal, low')
        self.assertEqual(completed, sorted(completed), 'completion order is not normal, normal, low')

    def test_bad_priority_is_400(self):
        status, headers, body = self.stack.http(
            'POST', '/queue/' + APP, {}, headers={'X-Fal-Queue-Priority': 'urgent'})
        self.assertJsonError(status, headers, body, 400)

    # -- the status stream -------------------------------------------------

    def test_stream_of_a_queued_request_that_logs(self):
        lines = 4
        head = self.hold_the_runner(lines=8, interval_ms=150)
        request_id = self.submit({'lines': lines, 'interval_ms': 400})['request_id']
        expected = ['line %d of %d' % (i, lines) for i in range(1, lines + 1)]
        path = '/queue/%s/requests/%s/status/stream?logs=1' % (APP, request_id)
        with self.stack.sse(path) as stream:
            self.assertEqual(stream.status, 200, stream.body()[:300] if stream.status != 200 else '')
            self.assertTrue(stream.headers.get('content-type', '').startswith('text/event-stream'),
                            stream.headers)
            events = [event for _, event in stream.events()]
        self.assertTrue(events, 'the stream sent no event')
        for event in events:
            self.assertIsInstance(event, dict, 'an event that is not JSON: %r' % (event,))
            self.assertIn(event.get('status'), ('IN_QUEUE', 'IN_PROGRESS', 'COMPLETED'), event)
            self.assertTrue(event.get('response_url', '').startswith(PUBLIC_URL + '/'), event)

        #  States in order, starting in the queue, ending once at COMPLETED
        states = [e['status'] for e in events]
        self.assertEqual(states[0], 'IN_QUEUE', states)
        self.assertEqual(events[0].get('queue_position'), 0, events[0])
        self.assertEqual(states[-1], 'COMPLETED', states)
        self.assertEqual(states.count('COMPLETED'), 1, states)
        order = {'IN_QUEUE': 0, 'IN_PROGRESS': 1, 'COMPLETED': 2}
        self.assertEqual(states, sorted(states, key=order.get), 'states out of order')
        self.assertIn('IN_PROGRESS', states)

        #  Every log line once, in order, one event each; no event that
        #  says nothing new
        seen, previous = [], None
        for event in events:
            new = [line for line in event.get('logs') or [] if
                   (line.get('timestamp'), line.get('message')) not in
                   {(s.get('timestamp'), s.get('message')) for s in seen}]
            key = (event['status'], event.get('queue_position'))
            self.assertTrue(new or key != previous, 'an event with nothing new: %r' % (event,))
            self.assertLessEqual(len(new), 1, 'log lines batched into one event: %r' % (event,))
            seen.extend(new)
            previous = key
        self.assertEqual([line['message'] for line in seen], expected)
        self.wait_completed(head)

    def test_stream_joined_mid_run_starts_with_the_current_state(self):
        lines = 5
        request_id = self.submit({'lines': lines, 'interval_ms': 300})['request_id']
        expected = ['line %d of %d' % (i, lines) for i in range(1, lines + 1)]

        def two_lines_logged():
            obj = self.status(request_id, logs=True)[1]
            return obj['status'] == 'IN_PROGRESS' and len(obj['logs'] or []) >= 2
        wait_until(two_lines_logged, 15, interval=0.02, what='two lines to be logged')
        path = '/queue/%s/requests/%s/status/stream?logs=1' % (APP, request_id)
        with self.stack.sse(path) as stream:
            self.assertEqual(stream.status, 200)
            events = [event for _, event in stream.events()]
        self.assertEqual(events[0]['status'], 'IN_PROGRESS', events[0])
        self.assertEqual(events[-1]['status'], 'COMPLETED', events[-1])
        #  The lines logged before it joined are not lost to it
        messages = []
        for event in events:
            for line in event.get('logs') or []:
                if line['message'] not in messages:
                    messages.append(line['message'])
        self.assertEqual(messages, expected)

    def test_stream_after_completion_gives_completed_at_once(self):
        request_id = self.submit({'lines': 2, 'interval_ms': 10})['request_id']
        self.wait_completed(request_id)
        started = time.monotonic()
        path = '/queue/%s/requests/%s/status/stream' % (APP, request_id)
        with self.stack.sse(path, timeout=10) as stream:
            self.assertEqual(stream.status, 200)
            events = list(stream.events())
        self.assertLess(time.monotonic() - started, 3.0, 'the stream did not end at once')
        self.assertEqual(len(events), 1, events)
        first = events[0][1]
        self.assertEqual(first['status'], 'COMPLETED', first)
        self.assertIn('inference_time', first.get('metrics') or {}, first)

    def test_stream_of_an_unknown_request_is_404(self):
        status, headers, body = self.stack.http(
            'GET', '/queue/%s/requests/%s/status/stream' % (APP, uuid.uuid4()), timeout=5)
        self.assertJsonError(status, headers, body, 404)

    # -- result ------------------------------------------------------------

    def test_result_replays_a_binary_body_exactly(self):
        data = bytes(range(256)) + b'\x00not json\xff'
        content_type = 'application/x-kiln-test'
        obj = self.submit(data, sub='/raw', headers={'Content-Type': content_type})
        request_id = obj['request_id']
        self.wait_completed(request_id)
        status, headers, body = self.result(request_id)
        self.assertEqual(status, 201)
        self.assertEqual(headers.get('content-type'), content_type)
        self.assertEqual(body, data)
        self.assertEqual(headers.get('x-fal-request-id'), request_id)

    def test_result_replays_what_the_sync_call_answers(self):
        for sub, payload in (('', {'lines': 1}), ('/fail', {}), ('/error', {})):
            with self.subTest(endpoint=sub or '/'):
                sync = self.stack.http('POST', '/%s%s' % (APP, sub), payload)
                request_id = self.submit(payload, sub=sub)['request_id']
                self.wait_completed(request_id)
                status, headers, body = self.result(request_id)
                self.assertEqual((status, body), (sync[0], sync[2]))
                self.assertEqual(headers.get('content-type'), sync[1].get('content-type'))
                self.assertEqual(headers.get('x-fal-request-id'), request_id)
                if sub == '':
                    self.assertEqual(json.loads(body), {'cancelled': False, 'lines': 1})
                elif sub == '/fail':
                    self.assertJsonError(status, headers, body, 418, 'app_error')
                else:
                    self.assertJsonError(status, headers, body, 500, 'runner_server_error')

    def test_result_before_completion_is_a_prompt_4xx(self):
        head = self.hold_the_runner(lines=10, interval_ms=100)
        queued = self.submit({'lines': 1})['request_id']
        for request_id, state in ((head, 'IN_PROGRESS'), (queued, 'IN_QUEUE')):
            started = time.monotonic()
            status, headers, body = self.result(request_id, timeout=5)
            self.assertLess(time.monotonic() - started, PROMPT_ANSWER_S, 'the result hangs')
            self.assertGreaterEqual(status, 400, (state, body))
            self.assertLess(status, 500, (state, body))
            self.assertJsonError(status, headers, body, status)
        self.wait_completed(head, queued)

    def test_result_of_an_unknown_or_another_apps_request_is_404(self):
        status, headers, body = self.result(str(uuid.uuid4()))
        self.assertJsonError(status, headers, body, 404)
        request_id = self.submit({'lines': 1})['request_id']
        self.wait_completed(request_id)
        status, headers, body = self.result(request_id, app=OTHER_APP)
        self.assertJsonError(status, headers, body, 404)

    # -- a sync caller that goes away ----------------------------------------

    def test_sync_caller_that_disconnects_leaves_its_result_readable(self):
        before = set(self.stack.request_ids(APP))
        payload = json.dumps({'lines': 4, 'interval_ms': 500}).encode()
        sock = socket.create_connection(('127.0.0.1', self.stack.http_port), timeout=10)
        try:
            sock.sendall(b'POST /%s HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n'
                         b'Content-Length: %d\r\n\r\n%s' % (APP.encode(), len(payload), payload))

            def the_new_request():
                new = set(self.stack.request_ids(APP)) - before
                return new and new.pop()
            request_id = wait_until(the_new_request, 15, interval=0.02,
                                    what='the sync call to be recorded')
            wait_until(lambda: self.stack.record(request_id).get('state') == 'IN_PROGRESS', 15,
                       interval=0.02, what='the sync call to start running')
        finally:
            sock.close()

        #  The gateway serves on, and forgets the caller
        self.assertEqual(self.stack.http('GET', '/health', timeout=5)[0], 200)
        status, _, obj = self.stack.call('/%s/raw' % APP, {'still': 'serving'})
        self.assertEqual((status, obj), (201, {'still': 'serving'}))
        wait_until(lambda: self.metric('kiln_gateway_pending_sync_calls') == 0, 15,
                   what='the gateway to forget the caller that went away')

        #  The request completes and its result stays readable
        done = self.wait_state(request_id, 'COMPLETED')
        self.assertNotIn('error_type', {k for k, v in done.items() if v}, done)
        status, headers, body = self.result(request_id)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body), {'cancelled': False, 'lines': 4})
        self.assertEqual(headers.get('x-fal-request-id'), request_id)

    def metric(self, name):
        status, _, body = self.stack.http('GET', '/metrics', timeout=5)
        self.assertEqual(status, 200)
        for line in body.decode().splitlines():
            if line.startswith(name + ' '):
                return float(line.split()[1])
        self.fail('no metric %s in /metrics' % name)


class QueueRetentionTest(kiln_harness.QueueTestCase):
    """Results expire after KILN_RESULT_RETENTION seconds (2 here)."""

    RETENTION_S = 2

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_PUBLIC_URL': PUBLIC_URL,
                             'KILN_RESULT_RETENTION': str(cls.RETENTION_S)},
                        worker_args=['--slots', 'CPU=1'])
        cls.deploy_or_dump(app_for_tests('slowlog'), APP)

    def test_result_is_gone_after_the_retention(self):
        request_id = self.submit({'lines': 2, 'interval_ms': 10})['request_id']
        self.wait_completed(request_id)
        completed = time.monotonic()
        status, _, body = self.result(request_id)
        self.assertEqual(status, 200, body)

        def gone():
            return self.result(request_id, timeout=5)[0] == 404
        wait_until(gone, self.RETENTION_S + 10, interval=0.1, what='the result to expire')
        self.assertGreaterEqual(time.monotonic() - completed, self.RETENTION_S - 0.5,
                                'the result expired before its retention')
        status, headers, body = self.result(request_id)
        self.assertJsonError(status, headers, body, 404)
        status, _ = self.status(request_id)
        self.assertEqual(status, 404)


if __name__ == '__main__':
    kiln_harness.main()
