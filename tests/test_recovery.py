"""Recovery after a broker restart: a request whose runner died while no
broker was listening is re-queued and completes; one whose runner lived
through the restart completes on that runner, once."""

import os
import signal

import kiln_harness
from kiln_harness import example, wait_until


class BrokerRestartTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        cls.deploy_or_dump(example('sleep'), 'local/sleep')

    def _submit_and_wait_running(self, ms):
        status, _, obj = self.stack.queue_submit('/local/sleep', {'ms': ms})
        self.assertEqual(status, 200, obj)
        request_id = obj['request_id']
        self.stack.wait_state('local/sleep', request_id, 'IN_PROGRESS', timeout=20)
        return request_id

    def test_request_of_a_runner_that_died_during_the_restart_runs_again(self):
        request_id = self._submit_and_wait_running(3000)
        runners = self.stack.runner_pids('local/sleep')
        self.assertTrue(runners, 'no runner for local/sleep')

        #  The broker goes, and so does the runner, before any broker can
        #  hear of it: nothing but Redis remembers the request now.
        self.stack.stop('broker', sig=signal.SIGKILL)
        for pid in runners:
            os.kill(pid, signal.SIGKILL)
        self.stack.start_broker()

        def completed():
            return self.stack.record(request_id).get('state') == 'COMPLETED'
        wait_until(completed, 30, what='the orphaned request to complete')
        record = self.stack.record(request_id)
        self.assertEqual(record.get('status'), '200', record)
        self.assertEqual(record.get('attempts'), '2', record)

    def test_request_of_a_runner_that_lived_completes_once_on_it(self):
        request_id = self._submit_and_wait_running(4000)
        runner = self.stack.record(request_id).get('runner')
        self.stack.stop('broker', sig=signal.SIGKILL)
        self.stack.start_broker()

        def completed():
            return self.stack.record(request_id).get('state') == 'COMPLETED'
        wait_until(completed, 30, what='the request to complete')
        record = self.stack.record(request_id)
        self.assertEqual(record.get('status'), '200', record)
        self.assertEqual(record.get('attempts'), '1', record)
        self.assertEqual(record.get('runner'), runner, record)


if __name__ == '__main__':
    kiln_harness.main()
