"""Cancelling queue requests in each state, and X-Fal-Request-Timeout
(issue 3).

One CPU slot and the slowlog test app (max_concurrency 1), so a test can
keep the only runner busy and have requests wait behind it. slowlog
checks kiln_request_cancelled() every few milliseconds and answers 499
{"cancelled": true, "lines": k} when it sees a cancel."""

import json
import threading
import time
import uuid

import kiln_harness
from kiln_harness import app_for_tests, wait_until

APP = 'local/slowlog'
OTHER_APP = 'local/other'


class QueueCancelTest(kiln_harness.QueueTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(worker_args=['--slots', 'CPU=1'])
        cls.deploy_or_dump(app_for_tests('slowlog'), APP)
        cls.deploy_or_dump(app_for_tests('slowlog'), OTHER_APP)

    def cancel(self, request_id, app=APP):
        """PUT .../cancel: (status, obj)."""
        status, headers, body = self.stack.http(
            'PUT', '/queue/%s/requests/%s/cancel' % (app, request_id), timeout=10)
        self.assertTrue(headers.get('content-type', '').startswith('application/json'),
                        (status, headers, body))
        return status, json.loads(body)

    # -- cancel --------------------------------------------------------------

    def test_cancel_a_queued_request(self):
        head = self.hold_the_runner(lines=15, interval_ms=100)
        doomed = self.submit({'lines': 1})['request_id']
        behind = self.submit({'lines': 1})
        self.assertEqual(behind['queue_position'], 1)

        status, obj = self.cancel(doomed)
        self.assertEqual(status, 202, obj)
        self.assertEqual(obj['status'], 'CANCELLATION_REQUESTED', obj)

        #  Completed at once, without running; the one behind moves up
        status, obj = self.status(doomed)
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['status'], 'COMPLETED', obj)
        self.assertEqual(obj.get('error_type'), 'client_cancelled', obj)
        self.assertIsInstance(obj.get('error'), str, obj)
        self.assertEqual(self.status(behind['request_id'])[1].get('queue_position'), 0)
        status, headers, body = self.result(doomed)
        self.assertJsonError(status, headers, body, 499, 'client_cancelled')
        self.assertEqual(headers.get('x-fal-request-id'), doomed)

        self.wait_completed(head, behind['request_id'])
        record = self.stack.record(doomed)
        self.assertFalse(record.get('started_ms'), 'the cancelled request ran: %r' % record)
        self.assertEqual(self.status(doomed)[1].get('error_type'), 'client_cancelled')

        #  A second cancel finds it finished
        status, obj = self.cancel(doomed)
        self.assertEqual(status, 400, obj)
        self.assertEqual(obj['status'], 'ALREADY_COMPLETED', obj)

    def test_cancel_a_running_request_reaches_its_handler(self):
        lines = 120             # 6 s unless cancelled
        request_id = self.submit({'lines': lines, 'interval_ms': 50})['request_id']

        def running_and_logging():
            status, obj = self.status(request_id, logs=True)
            return obj['status'] == 'IN_PROGRESS' and obj['logs']
        wait_until(running_and_logging, 15, interval=0.02,
                   what='the request to run and log its first line')

        asked = time.monotonic()
        status, obj = self.cancel(request_id)
        self.assertEqual(status, 202, obj)
        self.assertEqual(obj['status'], 'CANCELLATION_REQUESTED', obj)

        #  The handler stops early and says so
        self.wait_completed(request_id, timeout=8)
        self.assertLess(time.monotonic() - asked, 5.0, 'the handler did not see the cancel')
        status, headers, body = self.result(request_id)
        answer = json.loads(body)
        self.assertEqual(answer.get('cancelled'), True, (status, body))
        self.assertLess(answer['lines'], lines)
        self.assertEqual(status, 499, body)
        status, obj = self.status(request_id, logs=True)
        self.assertEqual(obj['status'], 'COMPLETED', obj)
        messages = [line['message'] for line in obj['logs']]
        self.assertTrue(messages and messages[-1].startswith('cancelled after'), messages)

        #  The runner is free again
        self.wait_completed(self.submit({'lines': 1})['request_id'])

    def test_cancel_a_completed_request(self):
        request_id = self.submit({'lines': 1})['request_id']
        self.wait_completed(request_id)
        status, obj = self.cancel(request_id)
        self.assertEqual(status, 400, obj)
        self.assertEqual(obj['status'], 'ALREADY_COMPLETED', obj)
        #  And its result is untouched
        status, _, body = self.result(request_id)
        self.assertEqual((status, json.loads(body)), (200, {'cancelled': False, 'lines': 1}))

    def test_cancel_an_unknown_request(self):
        status, obj = self.cancel(str(uuid.uuid4()))
        self.assertEqual(status, 404, obj)
        self.assertEqual(obj['status'], 'NOT_FOUND', obj)

    def test_cancel_with_another_apps_url_is_not_found(self):
        head = self.hold_the_runner(lines=10, interval_ms=100)
        queued = self.submit({'lines': 1})['request_id']
        for request_id in (head, queued):
            status, obj = self.cancel(request_id, app=OTHER_APP)
            self.assertEqual(status, 404, obj)
            self.assertEqual(obj['status'], 'NOT_FOUND', obj)
        #  Neither was touched
        done = self.wait_completed(head, queued)
        self.assertFalse([d for d in done if d.get('error_type')], done)
        self.assertEqual(json.loads(self.result(head)[2]), {'cancelled': False, 'lines': 10})

    # -- X-Fal-Request-Timeout ----------------------------------------------

    def test_request_that_does_not_start_in_time_ends_with_504(self):
        head = self.hold_the_runner(lines=31, interval_ms=100)     # 3 s
        since = time.monotonic()
        late = self.submit({'lines': 1}, headers={'X-Fal-Request-Timeout': '1'})['request_id']
        sync = {}

        def sync_call():
            sync['answer'] = self.stack.http('POST', '/' + APP, {'lines': 1},
                                             headers={'X-Fal-Request-Timeout': '1'}, timeout=20)
            sync['took'] = time.monotonic() - since
        caller = threading.Thread(target=sync_call)
        caller.start()
        try:
            #  Ends while the head still runs: the deadline is enforced
            #  by a timer, not only when a runner comes free
            done = self.wait_state(late, 'COMPLETED', timeout=10)
            self.assertEqual(self.status(head)[1]['status'], 'IN_PROGRESS',
                             'the timeout was only seen when the runner came free')
            self.assertGreaterEqual(time.monotonic() - since, 0.9, 'it ended before its timeout')
            self.assertEqual(done.get('error_type'), 'request_timeout', done)
            status, headers, body = self.result(late)
            self.assertJsonError(status, headers, body, 504, 'request_timeout')
            self.assertEqual(headers.get('x-fal-request-timeout-type'), 'user', headers)
        finally:
            caller.join(20)
        status, headers, body = sync['answer']
        self.assertJsonError(status, headers, body, 504, 'request_timeout')
        self.assertEqual(headers.get('x-fal-request-timeout-type'), 'user', headers)
        self.assertLess(sync['took'], 2.8, 'the sync call waited for the runner')

        self.wait_completed(head)
        self.assertFalse(self.stack.record(late).get('started_ms'), 'the timed out request ran')

    def test_request_that_starts_in_time_is_not_affected(self):
        head = self.hold_the_runner(lines=3, interval_ms=100)
        request_id = self.submit({'lines': 2, 'interval_ms': 10},
                                 headers={'X-Fal-Request-Timeout': '30'})['request_id']
        done = self.wait_completed(head, request_id)[1]
        self.assertFalse(done.get('error_type'), done)
        status, headers, _ = self.result(request_id)
        self.assertEqual(status, 200)
        self.assertNotIn('x-fal-request-timeout-type', headers)
        #  The deadline no longer counts once it started
        record = self.stack.record(request_id)
        with self.stack.redis() as r:
            self.assertIsNone(r.command('ZSCORE', 'kiln:deadlines', request_id), record)

    def test_bad_request_timeout_is_400(self):
        for value in ('abc', '-1', '1e400x'):
            for path in ('/queue/' + APP, '/' + APP):
                with self.subTest(value=value, path=path):
                    status, headers, body = self.stack.http(
                        'POST', path, {'lines': 1}, headers={'X-Fal-Request-Timeout': value})
                    self.assertJsonError(status, headers, body, 400)


if __name__ == '__main__':
    kiln_harness.main()
