"""Slots shared between apps: with every slot held by an idle runner of
another app, a new app's request evicts one rather than waiting for
keep_alive; and a worker that restarts does not fail the requests queued
meanwhile."""

import json
import time

import kiln_harness
from kiln_harness import example, wait_until


class SlotsTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        #  One CPU slot: two apps can never run side by side.
        cls.start_stack(worker_args=['--slots', 'CPU=1'])
        cls.deploy_or_dump(example('echo'), 'local/echo')
        cls.deploy_or_dump(example('sleep'), 'local/sleep')

    def test_idle_runner_of_another_app_gives_its_slot_up(self):
        status, _, obj = self.stack.call('/local/echo', {'first': True})
        self.assertEqual(status, 200, obj)
        self.assertEqual(len(self.stack.runner_pids('local/echo')), 1)

        #  echo keeps its runner for keep_alive (300 s) unless sleep needs
        #  the slot: the call must not wait that long.
        started = time.monotonic()
        status, _, obj = self.stack.call('/local/sleep', {'ms': 10}, timeout=20)
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['slept_ms'], 10)
        self.assertLess(time.monotonic() - started, 10)
        wait_until(lambda: not self.stack.runner_pids('local/echo'), 10,
                   what='the evicted echo runner to exit')

        #  And back: echo gets the slot from the now idle sleep runner.
        status, _, obj = self.stack.call('/local/echo', {'again': 1}, timeout=20)
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['input'], {'again': 1})

    def test_requests_queued_while_the_worker_restarts_wait_for_it(self):
        self.stack.stop('worker')
        status, _, body = self.stack.http('POST', '/queue/local/echo', {'during': 'restart'})
        self.assertEqual(status, 200, body)
        request_id = json.loads(body)['request_id']
        #  Past the broker's registration grace, well inside its
        #  scheduling grace: the request must still be waiting.
        time.sleep(4)
        with self.stack.redis() as r:
            self.assertEqual(r.hgetall('kiln:req:' + request_id).get('state'), 'IN_QUEUE')
        self.stack.start_worker()

        def completed():
            with self.stack.redis() as r:
                return r.hgetall('kiln:req:' + request_id).get('state') == 'COMPLETED'
        wait_until(completed, 20, what='the queued request to complete')
        with self.stack.redis() as r:
            record = r.hgetall('kiln:req:' + request_id)
        self.assertEqual(record.get('status'), '200', record)
        self.assertEqual(json.loads(record['result_body'])['input'], {'during': 'restart'})


if __name__ == '__main__':
    kiln_harness.main()
