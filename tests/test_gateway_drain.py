"""SIGTERM drains the gateway (issue 6, item 5): it closes its port at once
(new connections are refused, not left hanging), lets the sync calls in
flight get their answers within a bounded grace (KILN_GATEWAY_STOP_GRACE_MS
here), answers 503 to those that outlast it (their requests go on and
complete in Redis), and exits 0."""

import json
import signal
import socket
import threading
import time

import kiln_harness
from kiln_harness import example, wait_until

GRACE_MS = 1500


class GatewayDrainTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_GATEWAY_STOP_GRACE_MS': str(GRACE_MS)})
        cls.deploy_or_dump(example('sleep'), 'local/sleep')
        cls.deploy_or_dump(example('echo'), 'local/echo')

    def setUp(self):
        if not self.stack.running('gateway'):
            self.stack.start_gateway()

    def start_sync_call(self, ms):
        """A sync call to sleep in a thread; returns (thread, outcome dict,
        its request id once it runs)."""
        outcome = {}
        tag = 'drain-%d-%f' % (ms, time.monotonic())

        def call():
            try:
                outcome['answer'] = self.stack.http('POST', '/local/sleep',
                                                    {'ms': ms, 'tag': tag}, timeout=30)
            except Exception as e:      # noqa: BLE001 - reported by the test
                outcome['error'] = e
            outcome['at'] = time.monotonic()

        caller = threading.Thread(target=call)
        caller.start()

        def running():
            for request_id in self.stack.request_ids('local/sleep'):
                record = self.stack.record(request_id)
                if tag in record.get('body', '') and record.get('state') == 'IN_PROGRESS':
                    return request_id
            return None
        request_id = wait_until(running, 20, what='the sync call to run')
        return caller, outcome, request_id

    def sigterm_gateway(self):
        proc = self.stack.procs['gateway']
        proc.send_signal(signal.SIGTERM)
        return proc

    def test_idle_gateway_exits_at_once(self):
        started = time.monotonic()
        status = self.stack.stop('gateway', signal.SIGTERM)
        self.assertEqual(status, 0)
        self.assertLess(time.monotonic() - started, 1.5)

    def test_sync_call_in_flight_is_answered_then_exit_0(self):
        caller, outcome, request_id = self.start_sync_call(800)
        sent_at = time.monotonic()
        proc = self.sigterm_gateway()

        #  The port is closed at once: a new client is refused, not parked
        def refused():
            try:
                socket.create_connection(('127.0.0.1', self.stack.http_port), timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True
        wait_until(refused, 1.0, what='the port to refuse new connections')

        caller.join(20)
        self.assertFalse(caller.is_alive(), 'the call hangs')
        self.assertIn('answer', outcome, outcome)
        status, headers, body = outcome['answer']
        self.assertEqual(status, 200, body)
        self.assertEqual(headers.get('x-fal-request-id'), request_id)
        self.assertEqual(json.loads(body)['slept_ms'], 800)
        self.assertEqual(proc.wait(10), 0)
        #  It left once its last call was answered, not at the end of the grace
        self.assertLess(time.monotonic() - sent_at, GRACE_MS / 1000)
        self.stack.procs.pop('gateway')

    def test_call_past_the_grace_gets_503_and_completes_in_redis(self):
        caller, outcome, request_id = self.start_sync_call(GRACE_MS + 2000)
        sent_at = time.monotonic()
        proc = self.sigterm_gateway()
        caller.join(20)
        self.assertIn('answer', outcome, outcome)
        status, headers, body = outcome['answer']
        obj = self.assertJsonError(status, headers, body, 503)
        self.assertIn('shutting down', obj['detail'])
        self.assertEqual(headers.get('x-fal-request-id'), request_id)
        waited = outcome['at'] - sent_at
        self.assertGreater(waited, GRACE_MS / 1000 - 0.3)
        self.assertLess(waited, GRACE_MS / 1000 + 1.5)
        self.assertEqual(proc.wait(10), 0)
        self.stack.procs.pop('gateway')

        record = wait_until(
            lambda: (lambda rec: rec if rec.get('state') == 'COMPLETED' else None)(
                self.stack.record(request_id)), 20, what='the request to complete')
        self.assertEqual(record.get('status'), '200', record)
        self.stack.start_gateway()
        status, _, body = self.stack.http('GET', '/queue/local/sleep/requests/' + request_id)
        self.assertEqual(status, 200, body)


if __name__ == '__main__':
    kiln_harness.main()
