"""Leases (issue 6): nothing accepted is lost, and nothing completes twice,
when a runner stops answering, a handler runs past its app's
request_timeout, or the broker is killed or stopped while requests run.

Every check counts completions where they are recorded: the app's
kiln:stats counter of 200s (complete() bumps it once per completion) and
the webhook receiver's deliveries (one per completion)."""

import json
import os
import re
import signal
import time

import kiln_harness
from kiln_harness import example, wait_until


class LeasesTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        for name in ('local/sleep', 'local/stuck', 'local/load', 'local/drain', 'local/term'):
            cls.deploy_or_dump(example('sleep'), name)
        cls.hook = kiln_harness.WebhookReceiver()

    @classmethod
    def tearDownClass(cls):
        cls.hook.close()
        super().tearDownClass()

    # -- helpers -----------------------------------------------------------

    def setUp(self):
        #  A test that failed half-way may have left the broker down.
        if not self.stack.running('broker'):
            self.stack.start_broker()

    def submit(self, app, ms, hook_path=None):
        query = '?fal_webhook=' + self.hook.url(hook_path) if hook_path else ''
        status, _, obj = self.stack.queue_submit('/' + app, {'ms': ms}, query=query)
        self.assertEqual(status, 200, obj)
        return obj['request_id']

    def completed(self, request_id, timeout):
        def done():
            record = self.stack.record(request_id)
            return record if record.get('state') == 'COMPLETED' else None
        return wait_until(done, timeout, interval=0.05,
                          what='request %s to complete' % request_id)

    def successes(self, app):
        """How many requests of app completed with 200, as recorded."""
        with self.stack.redis() as r:
            value = r.command('HGET', 'kiln:stats:' + app, 'status:200')
        return int(value or 0)

    def runner_pid(self, runner_id):
        """The pid of the runner process with that id, or None."""
        for pid in kiln_harness.all_pids():
            if kiln_harness.proc_environ(pid).get('KILN_RUNNER_ID') == runner_id \
                    and kiln_harness.alive(pid):
                return pid
        return None

    def hook_bodies(self, path):
        return [json.loads(body) for _, _, _, body in self.hook.received(path)]

    def broker_log(self):
        with open(self.stack.log_path('broker'), encoding='utf-8', errors='replace') as f:
            return f.read()

    # -- tests -------------------------------------------------------------

    def test_a_stopped_runner_loses_its_request_to_another_and_its_late_result_is_ignored(self):
        """SIGSTOP: the runner falls silent; its request runs again on
        another runner after liveness; SIGCONT: its late RESULT changes
        nothing, and the webhook comes once."""
        request_id = self.submit('local/sleep', 2500, '/stopped')
        self.stack.wait_state('local/sleep', request_id, 'IN_PROGRESS', timeout=20)
        first_runner = self.stack.record(request_id)['runner']
        pid = self.runner_pid(first_runner)
        self.assertIsNotNone(pid, 'no process for runner %s' % first_runner)
        os.kill(pid, signal.SIGSTOP)
        try:
            record = self.completed(request_id, 30)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertEqual(record['status'], '200', record)
        self.assertEqual(record['attempts'], '2', record)
        self.assertNotEqual(record['runner'], first_runner, record)
        self.assertNotEqual(json.loads(record['result_body'])['runner'], pid, record)

        #  Woken up, it finishes its handler (and is stopped: the broker
        #  asked its worker to, when it fell silent); what it answers is
        #  dropped.
        wait_until(lambda: not kiln_harness.alive(pid), 20, what='the stopped runner to exit')
        wait_until(lambda: re.search(r'RESULT for %s from %s.*dropped' % (request_id, first_runner),
                                     self.broker_log()),
                   5, what='the late RESULT to reach the broker')
        again = self.stack.record(request_id)
        self.assertEqual(again['result_body'], record['result_body'])
        self.assertEqual(again['completed_ms'], record['completed_ms'])
        self.hook.wait_for(1, '/stopped')
        time.sleep(1)
        bodies = self.hook_bodies('/stopped')
        self.assertEqual(len(bodies), 1, bodies)
        self.assertEqual(bodies[0]['request_id'], request_id)
        self.assertEqual(bodies[0]['status'], 'OK')

    def test_a_request_past_request_timeout_ends_504_and_its_runner_is_killed(self):
        """request_timeout 2 s, a handler that would sleep 30 s: 504
        request_timeout in about 2 s, its runner killed, the next request
        served by a fresh one."""
        with self.stack.redis() as r:
            artifact = r.command('HGET', 'kiln:app:local/stuck', 'artifact').decode()
            manifest = json.loads(r.command('HGET', 'kiln:app:local/stuck', 'manifest'))
        manifest['request_timeout'] = 2
        status, _, obj = self.stack.call('/v1/apps', {
            'name': 'local/stuck', 'artifact': artifact, 'manifest': manifest})
        self.assertIn(status, (200, 201), obj)

        request_id = self.submit('local/stuck', 30000)
        self.stack.wait_state('local/stuck', request_id, 'IN_PROGRESS', timeout=20)
        started = time.monotonic()
        runner_id = self.stack.record(request_id)['runner']
        pid = self.runner_pid(runner_id)
        self.assertIsNotNone(pid)
        record = self.completed(request_id, 10)
        took = time.monotonic() - started
        self.assertEqual(record['status'], '504', record)
        self.assertEqual(record['error_type'], 'request_timeout', record)
        self.assertIn('request_timeout (2 s)', record['error'])
        self.assertLess(took, 2 + 2.5, 'the timeout took %.1f s' % took)
        #  SIGKILL at once, not after the 10 s a stopping runner gets.
        wait_until(lambda: not kiln_harness.alive(pid), 4, what='the stuck runner to be killed')

        status, _, obj = self.stack.call('/local/stuck', {'ms': 10}, timeout=30)
        self.assertEqual(status, 200, obj)
        self.assertNotEqual(obj['runner'], pid)
        status, _, body = self.stack.http(
            'GET', '/queue/local/stuck/requests/%s' % request_id)
        self.assertEqual(status, 504)
        self.assertEqual(json.loads(body)['error_type'], 'request_timeout')

    def test_broker_killed_under_load_every_request_completes_once(self):
        """kill -9 the broker while requests run and wait, start it again:
        each completes once (one 200 recorded, one webhook)."""
        count = 12
        ids = [self.submit('local/load', 1500, '/load') for _ in range(count)]
        wait_until(lambda: sum(1 for i in ids
                               if self.stack.record(i).get('state') == 'IN_PROGRESS') >= 2,
                   20, what='requests to run')
        self.stack.stop('broker', sig=signal.SIGKILL)
        time.sleep(0.5)
        self.stack.start_broker()
        for request_id in ids:
            record = self.completed(request_id, 60)
            self.assertEqual(record['status'], '200', record)
        self.assertEqual(self.successes('local/load'), count)
        self.hook.wait_for(count, '/load', timeout=30)
        time.sleep(1)
        delivered = sorted(b['request_id'] for b in self.hook_bodies('/load'))
        self.assertEqual(delivered, sorted(ids))

    def test_broker_sigterm_drains_and_the_next_broker_finishes_what_ran(self):
        """SIGTERM: the broker records what finishes within its grace,
        exits 0 within it, and what still ran completes once after a new
        broker starts, on the runner that ran it."""
        quick = [self.submit('local/drain', 1000, '/drain') for _ in range(2)]
        slow = [self.submit('local/drain', 9000, '/drain') for _ in range(2)]
        for request_id in quick + slow:
            self.stack.wait_state('local/drain', request_id, 'IN_PROGRESS', timeout=20)
        runners = {i: self.stack.record(i)['runner'] for i in slow}
        stopping = time.monotonic()
        status = self.stack.stop('broker', sig=signal.SIGTERM)
        took = time.monotonic() - stopping
        self.assertEqual(status, 0, 'the broker did not exit 0 on SIGTERM')
        self.assertLess(took, 4 + 2, 'the drain took %.1f s' % took)
        for request_id in quick:
            self.assertEqual(self.stack.record(request_id).get('state'), 'COMPLETED',
                             'a request that finished during the drain was not recorded')
        for request_id in slow:
            self.assertEqual(self.stack.record(request_id).get('state'), 'IN_PROGRESS')
        self.stack.start_broker()
        for request_id in slow:
            record = self.completed(request_id, 30)
            self.assertEqual(record['status'], '200', record)
            self.assertEqual(record['attempts'], '1', record)
            self.assertEqual(record['runner'], runners[request_id], record)
        self.assertEqual(self.successes('local/drain'), 4)
        self.hook.wait_for(4, '/drain', timeout=30)
        time.sleep(1)
        delivered = sorted(b['request_id'] for b in self.hook_bodies('/drain'))
        self.assertEqual(delivered, sorted(quick + slow))

    def test_a_runner_stopped_with_sigterm_finishes_its_request_and_exits_0(self):
        request_id = self.submit('local/term', 1500)
        self.stack.wait_state('local/term', request_id, 'IN_PROGRESS', timeout=20)
        runner_id = self.stack.record(request_id)['runner']
        pid = self.runner_pid(runner_id)
        os.kill(pid, signal.SIGTERM)
        record = self.completed(request_id, 20)
        self.assertEqual(record['status'], '200', record)
        self.assertEqual(record['attempts'], '1', record)
        self.assertEqual(record['runner'], runner_id)
        wait_until(lambda: not kiln_harness.alive(pid), 10, what='the runner to exit')

        #  The worker names no status for a clean exit (0).
        def reported():
            with open(self.stack.log_path('worker'), encoding='utf-8', errors='replace') as f:
                log = f.read()
            return re.search(r'runner %s for local/term (exited\n|.*(exit|signal))'
                             % runner_id, log)
        match = wait_until(reported, 5, what='the worker to report the exit')
        self.assertEqual(match.group(1), 'exited\n', match.group(0))


if __name__ == '__main__':
    kiln_harness.main()
