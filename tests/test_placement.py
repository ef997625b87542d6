"""Placement across workers (issue 4), with real processes: each worker
declares its slots (--slots) under its own id; a runner goes to a worker
with a free slot of the first machine type its app lists that has one,
and a GPU runner sees its own GPU alone (CUDA_VISIBLE_DEVICES); apps
spread over workers rather than piling onto one; an app whose machine
type nobody offers fails at once; a worker that joins during a burst
gets runners, and one stopped with SIGTERM finishes what it runs and
leaves without losing a request; a slot given up by eviction is taken
without a failed start.

The apps are variants of tests/apps/scaling.c: each answer names the
worker that served it and the runner's CUDA_VISIBLE_DEVICES."""

import json
import re
import signal
import threading
import time

import kiln_harness
from kiln_harness import wait_until

import scaling_helpers
from scaling_helpers import (burst, call, registered, runners, scaling_app, start_worker,
                             teardowns, wait_registered, wait_runner_count)

#  The broker waits this long after it starts before it decides that no
#  worker offers a machine type (workers re-register after a restart).
BROKER_REGISTRATION_GRACE_S = 3.5
SCHEDULING_FAILURE_DEADLINE_S = 5.0
#  keep_alive 1 or 2: an idle runner is gone within this.
RETIRE_DEADLINE_S = 8
RUNNER_UP_S = 10
#  A worker stopped with SIGTERM finishes its requests (1 s each here)
#  and leaves within this.
WORKER_LEAVE_S = 20

SINGLE_GPU_RE = r'^[0-9]+$'


def runners_on(stack, worker_id):
    return [r for r in runners(stack) if r.worker == worker_id]


class PlacementTest(scaling_helpers.ScalingTestCase):
    """w-gpu offers one GPU-H100 slot, w-cpu two CPU slots."""

    @classmethod
    def setUpClass(cls):
        cls.start_stack(worker_args=['--id', 'w-gpu', '--slots', 'GPU-H100=1'])
        start_worker(cls.stack, 'w-cpu', 'CPU=2')
        wait_registered(cls.stack, 'w-gpu', 'w-cpu')
        cls.deploy_or_dump(scaling_app('h100'), 'local/h100')            # GPU-H100
        cls.deploy_or_dump(scaling_app('sleepmax3'), 'local/cpu')        # CPU
        cls.deploy_or_dump(scaling_app('gpuorcpu'), 'local/gpuorcpu')    # GPU-H100, CPU
        cls.deploy_or_dump(scaling_app('a100'), 'local/a100')            # GPU-A100

    def wait_gpu_free(self):
        """The h100 and gpuorcpu runners keep their slot for keep_alive (2 s, 1 s)."""
        wait_until(lambda: not runners_on(self.stack, 'w-gpu'), RETIRE_DEADLINE_S,
                   what='the GPU slot of w-gpu to be free')

    def test_gpu_app_runs_on_the_gpu_worker_and_sees_only_its_gpu(self):
        self.wait_gpu_free()
        status, obj = call(self.stack, '/local/h100', {})
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['worker'], 'w-gpu')
        self.assertRegex(obj['cuda_visible_devices'], SINGLE_GPU_RE)
        [runner] = runners(self.stack, 'local/h100')
        self.assertEqual(runner.pid, obj['pid'])
        self.assertEqual(runner.worker, 'w-gpu')
        self.assertEqual(runner.cuda_visible_devices, obj['cuda_visible_devices'])

    def test_cpu_app_runs_on_the_cpu_worker_with_no_gpu(self):
        status, obj = call(self.stack, '/local/cpu', {})
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['worker'], 'w-cpu')
        self.assertEqual(obj['cuda_visible_devices'], '')
        for runner in runners(self.stack, 'local/cpu'):
            self.assertEqual((runner.worker, runner.cuda_visible_devices), ('w-cpu', ''))

    def test_app_listing_gpu_then_cpu_takes_the_gpu_first_then_cpu(self):
        app = 'local/gpuorcpu'
        self.wait_gpu_free()
        wait_runner_count(self.stack, app, 0, RETIRE_DEADLINE_S)
        #  The first request holds the GPU runner...
        status, _, first = self.stack.queue_submit('/' + app, {'ms': 4000})
        self.assertEqual(status, 200, first)
        self.stack.wait_state(app, first['request_id'], 'IN_PROGRESS', RUNNER_UP_S)
        [on_gpu] = runners(self.stack, app)
        self.assertEqual(on_gpu.worker, 'w-gpu')
        self.assertRegex(on_gpu.cuda_visible_devices, SINGLE_GPU_RE)
        #  ...so the second one gets a runner on CPU: the GPU slot is taken.
        status, second = call(self.stack, '/' + app, {'ms': 0})
        self.assertEqual(status, 200, second)
        self.assertEqual(second['worker'], 'w-cpu')
        self.assertEqual(second['cuda_visible_devices'], '')
        self.assertNotEqual(second['pid'], on_gpu.pid)

        self.stack.wait_state(app, first['request_id'], 'COMPLETED', RUNNER_UP_S)
        status, _, body = self.stack.http('GET', '/queue/%s/requests/%s'
                                          % (app, first['request_id']))
        self.assertEqual(status, 200, body)
        first_answer = json.loads(body)
        self.assertEqual(first_answer['worker'], 'w-gpu')
        self.assertEqual(first_answer['pid'], on_gpu.pid)
        self.assertRegex(first_answer['cuda_visible_devices'], SINGLE_GPU_RE)

    def test_machine_type_nobody_offers_is_503_at_once(self):
        wait = BROKER_REGISTRATION_GRACE_S - self.stack.uptime('broker')
        if wait > 0:
            time.sleep(wait)    # a documented grace period, not a condition to poll
        started = time.monotonic()
        status, headers, body = self.stack.http('POST', '/local/a100', {'ms': 0})
        elapsed = time.monotonic() - started
        obj = self.assertJsonError(status, headers, body, 503, 'runner_scheduling_failure')
        self.assertIn('GPU-A100', obj['detail'])
        self.assertLess(elapsed, SCHEDULING_FAILURE_DEADLINE_S)
        self.assertEqual(runners(self.stack, 'local/a100'), [])


class SpreadTest(scaling_helpers.ScalingTestCase):
    """Two CPU workers, w-a and w-b, four slots each."""

    @classmethod
    def setUpClass(cls):
        cls.start_stack(worker_args=['--id', 'w-a', '--slots', 'CPU=4'])
        start_worker(cls.stack, 'w-b', 'CPU=4')
        wait_registered(cls.stack, 'w-a', 'w-b')

    def test_apps_spread_over_workers(self):
        #  Two apps with min_concurrency 1: one runner on each worker.
        for app in ('local/spread-a', 'local/spread-b'):
            self.stack.deploy(scaling_app('spread'), app)
        found = [wait_runner_count(self.stack, app, 1, RUNNER_UP_S)[0]
                 for app in ('local/spread-a', 'local/spread-b')]
        self.assertEqual({r.worker for r in found}, {'w-a', 'w-b'}, found)

        #  And an app's own runners spread too: three runners, not all on
        #  one worker although either could hold them all.
        self.stack.deploy(scaling_app('sleepmax3'), 'local/burst')
        results = burst(self.stack, '/local/burst', [{'ms': 500} for _ in range(6)])
        for status, obj in results:
            self.assertEqual(status, 200, obj)
        by_worker = {}
        for runner in runners(self.stack, 'local/burst'):
            by_worker.setdefault(runner.worker, []).append(runner.pid)
        self.assertEqual(set(by_worker), {'w-a', 'w-b'}, by_worker)
        self.assertEqual(sum(len(pids) for pids in by_worker.values()), 3, by_worker)


class WorkersComeAndGoTest(scaling_helpers.ScalingTestCase):
    """w-a offers one CPU slot; other workers join and leave during bursts
    of local/scaleout (max_concurrency 8)."""

    @classmethod
    def setUpClass(cls):
        cls.start_stack(worker_args=['--id', 'w-a', '--slots', 'CPU=1'])
        wait_registered(cls.stack, 'w-a')
        cls.deploy_or_dump(scaling_app('scaleout'), 'local/scaleout')

    def burst_in_background(self, count, ms):
        """A burst in a thread; returns (thread, results list)."""
        results = []

        def run():
            results.extend(burst(self.stack, '/local/scaleout', [{'ms': ms}] * count))
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, results

    def test_worker_joining_during_a_burst_gets_runners(self):
        thread, results = self.burst_in_background(24, 300)
        #  The burst runs on w-a's one slot...
        wait_until(lambda: runners_on(self.stack, 'w-a'), RUNNER_UP_S,
                   what='a runner on w-a')
        #  ...when w-b joins with three more.
        name = start_worker(self.stack, 'w-b', 'CPU=3')
        try:
            wait_registered(self.stack, 'w-b')
            thread.join(60)
            self.assertFalse(thread.is_alive(), 'the burst did not finish')
            self.assertEqual(len(results), 24)
            for status, obj in results:
                self.assertEqual(status, 200, obj)
            served = {obj['worker'] for _, obj in results}
            self.assertIn('w-b', served, 'the worker that joined got no runner')
        finally:
            self.assertEqual(self.stack.stop(name), 0)

    def test_worker_stopped_with_sigterm_finishes_its_requests_and_leaves(self):
        name = start_worker(self.stack, 'w-c', 'CPU=2')
        wait_registered(self.stack, 'w-c')
        thread, results = self.burst_in_background(12, 1000)
        on_c = wait_until(lambda: len(runners_on(self.stack, 'w-c')) == 2
                          and runners_on(self.stack, 'w-c'), RUNNER_UP_S,
                          what='two runners on w-c')
        #  Let them take a request each, then stop the worker mid-burst.
        time.sleep(0.5)
        starts_on_c = len(re.findall(r'starting runner \S+ .* on w-c ',
                                     kiln_harness.tail(self.stack.log_path('broker'), 100000)))
        proc = self.stack.procs[name]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WORKER_LEAVE_S)
        except Exception:       # noqa: BLE001 - reported by the assertion below
            pass
        self.assertEqual(self.stack.stop(name), 0, 'w-c did not exit 0 on SIGTERM')

        thread.join(60)
        self.assertFalse(thread.is_alive(), 'the burst did not finish')
        self.assertEqual(len(results), 12)
        for status, obj in results:
            self.assertEqual(status, 200, obj)      # none lost, none runner_disconnected
        self.assertIn('w-c', {obj['worker'] for _, obj in results})
        #  It took no new runner once told to stop, and its runners retired
        #  the orderly way: teardown() ran in each.
        log = kiln_harness.tail(self.stack.log_path('broker'), 100000)
        self.assertEqual(len(re.findall(r'starting runner \S+ .* on w-c ', log)), starts_on_c)
        done = teardowns(self.stack)
        for runner in on_c:
            self.assertIn(runner.pid, done)
        self.assertFalse(runners_on(self.stack, 'w-c'))
        self.assertTrue(registered(self.stack, 'w-c'))


class SlotHandOverTest(scaling_helpers.ScalingTestCase):
    """One CPU slot (w-one), two apps: each call of one evicts the other's
    idle runner."""

    @classmethod
    def setUpClass(cls):
        cls.start_stack(worker_args=['--id', 'w-one', '--slots', 'CPU=1'])
        wait_registered(cls.stack, 'w-one')
        cls.deploy_or_dump(scaling_app('sleepmax3'), 'local/first')
        cls.deploy_or_dump(scaling_app('sleepmax3'), 'local/second')

    def test_a_slot_given_up_by_eviction_is_taken_without_a_failed_start(self):
        #  The evicted runner says DISCONNECT before the worker has reaped
        #  it; a start sent to the worker in between (on the wake of a
        #  request queued meanwhile) finds no free slot there, counts as
        #  a failed start and backs the app off for a second.
        status, obj = call(self.stack, '/local/first', {})
        self.assertEqual(status, 200, obj)
        ids = []
        for _ in range(40):
            status, _, obj = self.stack.queue_submit('/local/second', {'ms': 0})
            self.assertEqual(status, 200, obj)
            ids.append(obj['request_id'])
            time.sleep(0.005)
        for request_id in ids:
            self.stack.wait_state('local/second', request_id, 'COMPLETED', 20)
        broker_log = kiln_harness.tail(self.stack.log_path('broker'), 100000)
        worker_log = kiln_harness.tail(self.stack.log_path('worker'), 100000)
        self.assertFalse('no free CPU slot' in worker_log,
                         'the worker refused a start: its slot was not free yet')
        self.assertFalse(re.search(r'exited with status 127', broker_log),
                         'the broker counted a failed start')
        self.assertEqual(len(re.findall(r'starting runner \S+ of local/second ', broker_log)), 1)


if __name__ == '__main__':
    kiln_harness.main()
