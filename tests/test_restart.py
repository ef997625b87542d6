"""The gateway holds nothing durable: stopped or killed, it is started
again on the same port and serves on; a request it accepted before it was
killed mid-call still completes in Redis."""

import json
import signal
import threading
import uuid

import kiln_harness
from kiln_harness import example, wait_until

SLOW_CALL_MS = 2000


class RestartTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        cls.deploy_or_dump(example('echo'), 'local/echo')
        cls.deploy_or_dump(example('sleep'), 'local/sleep')

    def setUp(self):
        #  A test that failed half-way may have left the gateway down.
        if not self.stack.running('gateway'):
            self.stack.start_gateway()

    def echo_works(self, tag):
        status, _, obj = self.stack.call('/local/echo', {'tag': tag})
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['input'], {'tag': tag})

    def find_request(self, tag):
        """The id of the one request whose body carries tag, or None."""
        with self.stack.redis() as r:
            for key in r.command('KEYS', 'kiln:req:*'):
                key = key.decode()
                if key.count(':') != 2:
                    continue            # kiln:req:{id}:logs
                body = r.command('HGET', key, 'body') or b''
                if tag.encode() in body:
                    return key[len('kiln:req:'):]
        return None

    def record(self, request_id):
        with self.stack.redis() as r:
            return r.hgetall('kiln:req:' + request_id)

    def test_gateway_stopped_and_started_again(self):
        self.echo_works('before')
        status = self.stack.stop('gateway', signal.SIGTERM)
        self.assertEqual(status, 0, 'the gateway did not exit cleanly on SIGTERM')
        self.stack.start_gateway()
        self.echo_works('after restart')

    def test_gateway_killed_mid_call_the_request_still_completes(self):
        tag = uuid.uuid4().hex
        outcome = {}

        def slow_call():
            try:
                outcome['answer'] = self.stack.http(
                    'POST', '/local/sleep', {'ms': SLOW_CALL_MS, 'tag': tag}, timeout=30)
            except Exception as e:      # noqa: BLE001 - expected: the gateway dies
                outcome['error'] = e

        caller = threading.Thread(target=slow_call)
        caller.start()
        try:
            request_id = wait_until(lambda: self.find_request(tag), 15,
                                    what='the slow request to be recorded')
            wait_until(lambda: self.record(request_id).get('state') == 'IN_PROGRESS', 15,
                       what='the slow request to start running')
            self.stack.stop('gateway', signal.SIGKILL)
        finally:
            caller.join(30)
        self.assertFalse(caller.is_alive(), 'the client hangs on a dead gateway')
        self.assertIn('error', outcome, 'the call was answered by a killed gateway: %r'
                      % (outcome,))

        record = wait_until(
            lambda: (lambda rec: rec if rec.get('state') == 'COMPLETED' else None)(
                self.record(request_id)),
            SLOW_CALL_MS / 1000 + 15, what='the request to complete in Redis')
        self.assertEqual(record['status'], '200', record)
        self.assertEqual(json.loads(record['result_body'])['slept_ms'], SLOW_CALL_MS)

        self.stack.start_gateway()
        self.echo_works('after kill')
        status, _, obj = self.stack.call('/local/sleep', {'ms': 1})
        self.assertEqual(status, 200, obj)


if __name__ == '__main__':
    kiln_harness.main()
