"""Webhooks end to end (issue 3): ?fal_webhook=URL on a queue submit makes
kiln POST {request_id, gateway_request_id, status, payload, error} to a
real receiver (an http.server in a thread) when the request completes;
failed deliveries are retried with a doubling delay, pending ones live in
Redis and survive a broker killed with SIGKILL."""

import json
import signal
import time

import kiln_harness
from kiln_harness import UUID4_RE, WebhookReceiver, app_for_tests, example, wait_until

#  First retry delay (doubling), and tries, for the retry tests.
BACKOFF_MS = 200
TRIES = 3
#  After the last expected delivery, how long to watch for an extra one.
QUIET_S = 1.5


class WebhookTestCase(kiln_harness.QueueTestCase):

    app = 'local/echo'

    def setUp(self):
        self.hook = WebhookReceiver()
        self.addCleanup(self.hook.close)

    def submit_with_hook(self, payload, path='/hook', sub='', app=None):
        query = '?fal_webhook=' + self.hook.url(path)
        return self.submit(payload, sub=sub, query=query, app=app)['request_id']

    def webhook_state(self, request_id, state, timeout=20.0):
        """Waits until the record says the delivery ended (state:
        delivered or failed); returns the record."""
        def reached():
            record = self.stack.record(request_id)
            return record if record.get('webhook_state') == state else None
        return wait_until(reached, timeout, interval=0.02,
                          what='webhook_state %s for %s' % (state, request_id))

    def assert_no_more_deliveries(self, count, path='/hook'):
        """Nothing beyond count deliveries arrives for QUIET_S."""
        deadline = time.monotonic() + QUIET_S
        while time.monotonic() < deadline:
            self.assertEqual(len(self.hook.received(path)), count,
                             'an extra webhook delivery arrived')
            time.sleep(0.05)

    def body_of(self, delivery):
        _, _, headers, body = delivery
        self.assertTrue(headers.get('content-type', '').startswith('application/json'), headers)
        return json.loads(body)


class WebhookTest(WebhookTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_WEBHOOK_BACKOFF_MS': str(BACKOFF_MS),
                             'KILN_WEBHOOK_TRIES': str(TRIES),
                             'KILN_WEBHOOK_TIMEOUT_MS': '3000'})
        cls.deploy_or_dump(example('echo'), 'local/echo')

    def test_retried_until_2xx_then_delivered_exactly_once(self):
        self.hook.set_answers([500, 500])
        request_id = self.submit_with_hook({'prompt': 'hook me'})
        deliveries = self.hook.wait_for(3)
        self.webhook_state(request_id, 'delivered')
        self.assert_no_more_deliveries(3)

        bodies = [d[3] for d in deliveries]
        self.assertEqual(bodies[0], bodies[1], 'retries do not send the same body')
        self.assertEqual(bodies[1], bodies[2], 'retries do not send the same body')
        body = self.body_of(deliveries[0])
        self.assertEqual(body['request_id'], request_id)
        self.assertRegex(body['gateway_request_id'], UUID4_RE)
        self.assertEqual(body['status'], 'OK')
        self.assertEqual(body['payload'], {'path': '/', 'input': {'prompt': 'hook me'}})
        self.assertIsNone(body['error'])

        #  A doubling delay: about BACKOFF_MS, then twice that
        times = [d[0] for d in deliveries]
        first_gap, second_gap = times[1] - times[0], times[2] - times[1]
        self.assertGreaterEqual(first_gap, BACKOFF_MS / 1000 * 0.9, times)
        self.assertGreaterEqual(second_gap, 2 * BACKOFF_MS / 1000 * 0.9, times)
        self.assertGreater(second_gap, first_gap, 'the delay between tries does not grow')

        record = self.stack.record(request_id)
        self.assertEqual(record.get('webhook_attempts'), '3', record)
        #  The result stays readable through the queue API
        status, headers, data = self.result(request_id)
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data), body['payload'])

    def test_error_result_is_delivered_as_error(self):
        request_id = self.submit_with_hook({'status': 409, 'detail': 'taken'}, sub='/fail')
        delivery, = self.hook.wait_for(1)
        self.webhook_state(request_id, 'delivered')
        body = self.body_of(delivery)
        self.assertEqual(body['request_id'], request_id)
        self.assertEqual(body['status'], 'ERROR')
        self.assertIsInstance(body['error'], str, body)
        self.assertTrue(body['error'], body)
        self.assertIn('payload', body)
        self.assert_no_more_deliveries(1)

    def test_runner_error_is_delivered_as_error(self):
        #  No runner can be placed (no worker offers the machine type):
        #  kiln's own error, not the app's
        self.deploy_or_dump(app_for_tests('gpuonly'), 'local/gpuonly')
        request_id = self.submit_with_hook({}, app='local/gpuonly')
        delivery, = self.hook.wait_for(1)
        body = self.body_of(delivery)
        self.assertEqual(body['request_id'], request_id)
        self.assertEqual(body['status'], 'ERROR')
        self.assertTrue(body['error'], body)

    def test_receiver_that_keeps_failing_is_given_up_after_the_tries(self):
        self.hook.set_answers([500] * (TRIES + 5))
        request_id = self.submit_with_hook({'never': 'acknowledged'})
        self.hook.wait_for(TRIES)
        record = self.webhook_state(request_id, 'failed')
        self.assertEqual(record.get('webhook_attempts'), str(TRIES), record)
        self.assertTrue(record.get('webhook_last_error'), record)
        self.assert_no_more_deliveries(TRIES)
        with self.stack.redis() as r:
            self.assertIsNone(r.command('ZSCORE', 'kiln:webhooks', request_id))

    def test_bad_webhook_url_is_400(self):
        for url in ('ftp://127.0.0.1/hook', 'not a url', 'http://', 'javascript:alert(1)'):
            with self.subTest(url=url):
                status, headers, body = self.stack.http(
                    'POST', '/queue/local/echo?fal_webhook=' + url.replace(' ', '%20'), {})
                self.assertJsonError(status, headers, body, 400)
        self.assertEqual(self.hook.received(), [])

    def test_request_without_webhook_sends_nothing(self):
        request_id = self.submit({'quiet': True})['request_id']
        self.wait_completed(request_id)
        record = self.stack.record(request_id)
        self.assertFalse(record.get('webhook_state'), record)
        self.assert_no_more_deliveries(0)


class WebhookRestartTest(WebhookTestCase):
    """The broker (and the deliverer in it) killed with SIGKILL and
    started again: pending deliveries are in Redis, none is lost and none
    sent twice."""

    #  Long enough that the test can kill the broker inside the wait.
    RESTART_BACKOFF_MS = 1500

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_WEBHOOK_BACKOFF_MS': str(cls.RESTART_BACKOFF_MS),
                             'KILN_WEBHOOK_TRIES': '5',
                             'KILN_WEBHOOK_TIMEOUT_MS': '3000'},
                        worker_args=['--slots', 'CPU=2'])
        cls.deploy_or_dump(example('echo'), 'local/echo')
        cls.deploy_or_dump(app_for_tests('slowlog'), 'local/slowlog')

    def setUp(self):
        super().setUp()
        if not self.stack.running('broker'):
            self.stack.start_broker()

    def redis_now_ms(self):
        with self.stack.redis() as r:
            seconds, micros = r.command('TIME')
        return int(seconds) * 1000 + int(micros) // 1000

    def test_retry_pending_while_the_broker_is_down(self):
        self.hook.set_answers([500])
        request_id = self.submit_with_hook({'survives': 'a broker kill'})
        self.hook.wait_for(1)
        wait_until(lambda: self.stack.record(request_id).get('webhook_attempts') == '1', 10,
                   interval=0.005, what='the failed try to be recorded')
        self.stack.stop('broker', signal.SIGKILL)

        #  Past the retry's due time, nothing is sent while the broker is down
        with self.stack.redis() as r:
            due = r.command('ZSCORE', 'kiln:webhooks', request_id)
        self.assertIsNotNone(due, 'the retry is not in the outbox')
        wait_until(lambda: self.redis_now_ms() > float(due) + 200, 10, interval=0.05,
                   what='the retry to be due')
        self.assertEqual(len(self.hook.received()), 1)

        self.stack.start_broker()
        deliveries = self.hook.wait_for(2, timeout=20)
        self.webhook_state(request_id, 'delivered')
        self.assert_no_more_deliveries(2)
        self.assertEqual(deliveries[0][3], deliveries[1][3])
        self.assertEqual(self.body_of(deliveries[1])['request_id'], request_id)

    def test_broker_killed_while_the_request_runs(self):
        request_id = self.submit_with_hook({'lines': 6, 'interval_ms': 150}, app='local/slowlog')
        self.wait_state(request_id, 'IN_PROGRESS', app='local/slowlog')
        self.stack.stop('broker', signal.SIGKILL)
        self.stack.start_broker()
        delivery, = self.hook.wait_for(1, timeout=40)
        self.webhook_state(request_id, 'delivered')
        self.assert_no_more_deliveries(1)
        body = self.body_of(delivery)
        self.assertEqual(body['request_id'], request_id)
        done = self.wait_state(request_id, 'COMPLETED', app='local/slowlog')
        self.assertEqual(body['status'], 'ERROR' if done.get('error_type') else 'OK', (body, done))

    def test_broker_killed_before_the_request_is_taken(self):
        self.stack.stop('broker', signal.SIGKILL)
        request_id = self.submit_with_hook({'queued': 'while the broker is down'})
        self.assertEqual(self.stack.record(request_id).get('state'), 'IN_QUEUE')
        self.stack.start_broker()
        delivery, = self.hook.wait_for(1, timeout=30)
        self.webhook_state(request_id, 'delivered')
        self.assert_no_more_deliveries(1)
        body = self.body_of(delivery)
        self.assertEqual((body['request_id'], body['status']), (request_id, 'OK'))
        self.assertEqual(body['payload'], {'path': '/', 'input': {'queued': 'while the broker is down'}})


if __name__ == '__main__':
    kiln_harness.main()
