"""Runner lifecycle and autoscaling (issue 4), with real processes: a
burst never takes an app past max_concurrency; keep_alive brings an app
back down to its min_concurrency; min_concurrency runners come up with no
traffic; a runner serves max_multiplexing requests at once; a setup that
crashes, fails or hangs past startup_timeout ends the queued requests
with an error after a bounded number of tries, and its runners are
killed; and live control and visibility: kiln apps scale changes a
running app's bounds, kiln runners lists every runner, /metrics exposes
runners, queues, outcomes and latency, kiln apps show reports failed
starts.

One worker with 16 CPU slots: slots are never what limits an app here,
its own bounds are. The apps are variants of tests/apps/scaling.c (see
tests/apps/CMakeLists.txt for their bounds); runners are counted as
processes (their environment names the app), sampled all along."""

import json
import re
import threading
import time

import kiln_harness
from kiln_harness import app_for_tests, wait_until

import scaling_helpers
from scaling_helpers import (RunnerSampler, burst, runner_pids, runners, setups_done,
                             teardowns, scaling_app, wait_runner_count)

#  An app's runner is up (setup done) within this of being wanted.
RUNNER_UP_S = 10
#  keep_alive 1: the spare runners retire within this of the last request
#  (keep_alive, a sweep interval, and teardown).
RETIRE_DEADLINE_S = 8
#  A runner stopped for not becoming ready is killed within this: the
#  worker's grace for teardown (10 s), then SIGKILL.
KILLED_DEADLINE_S = 15
#  A setup that fails or hangs (startup_timeout 2 s) is tried a bounded
#  number of times, with a backoff: the queued requests end within this.
STARTUP_FAILURE_DEADLINE_S = 40
#  kiln runners shows this much of a runner id ("r-" and 8 hex digits).
SHORT_ID_LEN = 10


class ScalingTest(scaling_helpers.ScalingTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        for name in ('sleepmax3', 'keepalive', 'multiplex', 'mux64', 'hangsetup', 'crashsetup'):
            cls.deploy_or_dump(scaling_app(name), 'local/' + name)
        cls.deploy_or_dump(app_for_tests('badsetup'), 'local/badsetup')

    def assertAllOk(self, results):
        for status, obj in results:
            self.assertEqual(status, 200, obj)

    # -- max_concurrency -----------------------------------------------------

    def test_burst_never_has_more_runners_than_max_concurrency(self):
        app = 'local/sleepmax3'
        with RunnerSampler(self.stack, app) as sampler:
            results = burst(self.stack, '/' + app, [{'ms': 100} for _ in range(50)])
        self.assertEqual(len(results), 50)
        self.assertAllOk(results)
        self.assertGreater(len(sampler.samples), 20, 'too few samples to tell')
        self.assertLessEqual(sampler.max(), 3, 'more runners than max_concurrency 3')
        #  50 requests of 100 ms: demand is far above 3, so it does use all 3
        self.assertEqual(sampler.max(), 3, 'the burst never got its 3 runners')
        served_by = {obj['pid'] for _, obj in results}
        self.assertLessEqual(len(served_by), 3, served_by)
        self.assertLessEqual(served_by, sampler.pids)

    # -- keep_alive and min_concurrency -----------------------------------------

    def test_keep_alive_brings_the_app_back_down_to_its_min(self):
        app = 'local/keepalive'             # keep_alive 1, min 1, max 3
        wait_runner_count(self.stack, app, 1, RUNNER_UP_S)
        results = burst(self.stack, '/' + app, [{'ms': 600} for _ in range(9)])
        self.assertAllOk(results)
        served_by = {obj['pid'] for _, obj in results}
        self.assertEqual(len(served_by), 3, 'the burst should have scaled it to 3')
        idle_since = time.monotonic()

        left = wait_runner_count(self.stack, app, 1, RETIRE_DEADLINE_S,
                                 what='keepalive back down to its 1 runner')
        self.assertLess(time.monotonic() - idle_since, RETIRE_DEADLINE_S)
        #  And it stays at its min: nothing retires the last one.
        with RunnerSampler(self.stack, app) as sampler:
            time.sleep(2.5)
        self.assertEqual({count for _, count in sampler.samples}, {1})
        self.assertEqual(runner_pids(self.stack, app), [left[0].pid])

        #  The retired ones ran their teardown() on the way out.
        retired = served_by - {left[0].pid}
        wait_until(lambda: retired <= set(teardowns(self.stack)), 5,
                   what='teardown lines of the retired runners %s' % sorted(retired))

    def test_min_concurrency_runners_start_with_no_traffic(self):
        app = 'local/minconc'               # min 2, max 3
        deployed = time.monotonic()
        self.stack.deploy(scaling_app('minconc'), app)
        found = wait_runner_count(self.stack, app, 2, RUNNER_UP_S)
        pids = {r.pid for r in found}
        wait_until(lambda: pids <= set(setups_done(self.stack)), RUNNER_UP_S,
                   what='both minconc runners to finish setup()')
        self.assertLess(time.monotonic() - deployed, RUNNER_UP_S)

        #  They stay, and no third one comes without demand.
        with RunnerSampler(self.stack, app) as sampler:
            time.sleep(1.5)
        self.assertEqual({count for _, count in sampler.samples}, {2})
        self.assertEqual(sampler.pids, pids)

        #  Both are ready: two requests at once run on the two of them.
        results = burst(self.stack, '/' + app, [{'ms': 500}, {'ms': 500}])
        self.assertAllOk(results)
        self.assertEqual({obj['pid'] for _, obj in results}, pids)
        self.assertEqual(set(runner_pids(self.stack, app)), pids)

    # -- max_multiplexing ----------------------------------------------------

    def test_one_runner_serves_max_multiplexing_requests_at_once(self):
        app = 'local/multiplex'             # max_multiplexing 4, max 1
        results = burst(self.stack, '/' + app, [{'ms': 1000} for _ in range(4)])
        self.assertAllOk(results)
        answers = [obj for _, obj in results]
        self.assertEqual(len({a['pid'] for a in answers}), 1, answers)
        self.assertEqual(max(a['peak'] for a in answers), 4, answers)
        #  All four overlap: the last to start began before the first ended.
        self.assertLess(max(a['start_ms'] for a in answers),
                        min(a['end_ms'] for a in answers), answers)
        self.assertEqual(len(runners(self.stack, app)), 1)

    def test_a_runner_with_64_slots_is_given_64_requests_at_once(self):
        app = 'local/mux64'                 # max_multiplexing 64, max 1
        status, obj = burst(self.stack, '/' + app, [{'ms': 0}])[0]
        self.assertEqual(status, 200, obj)
        results = burst(self.stack, '/' + app, [{'ms': 1500} for _ in range(64)])
        self.assertAllOk(results)
        answers = [obj for _, obj in results]
        self.assertEqual(len({a['pid'] for a in answers}), 1, answers)
        self.assertEqual(max(a['peak'] for a in answers), 64, answers)

    # -- setups that fail ----------------------------------------------------

    def submit_queued(self, app, count):
        ids = []
        for i in range(count):
            status, _, obj = self.stack.queue_submit('/' + app, {'ms': 0, 'i': i})
            self.assertEqual(status, 200, obj)
            ids.append(obj['request_id'])
        return ids

    def sync_in_background(self, app):
        """A sync call in a thread; returns (thread, result list)."""
        result = []

        def run():
            status, headers, body = self.stack.http('POST', '/' + app, {'ms': 0},
                                                    timeout=STARTUP_FAILURE_DEADLINE_S + 10)
            result.append((status, headers, body))
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, result

    def starts_logged(self, app):
        """How many runners the broker started for app."""
        log = kiln_harness.tail(self.stack.log_path('broker'), 100000)
        return len(re.findall(r'starting runner \S+ of %s ' % re.escape(app), log))

    def check_failed(self, app, ids, sync, error_type, detail=None):
        """The queued requests and the sync call all ended with
        error_type (and detail in the message, when given)."""
        for request_id in ids:
            obj = self.stack.wait_state(app, request_id, 'COMPLETED', STARTUP_FAILURE_DEADLINE_S)
            self.assertEqual(obj.get('error_type'), error_type, obj)
            self.assertIsInstance(obj.get('error'), str, obj)
            if detail:
                self.assertIn(detail, obj['error'], obj)
        thread, result = sync
        thread.join(STARTUP_FAILURE_DEADLINE_S)
        self.assertTrue(result, 'the sync call to %s never ended' % app)
        status, headers, body = result[0]
        obj = self.assertJsonError(status, headers, body, 503, error_type)
        if detail:
            self.assertIn(detail, obj['detail'])

    def test_setups_that_crash_fail_or_hang_end_queued_requests_with_an_error(self):
        #  One test for the three, run side by side: a hung runner takes
        #  the worker's stop grace (10 s) to be killed, and the others
        #  need not wait for it.
        hang = 'local/hangsetup'            # setup() never returns; startup_timeout 2
        hang_ids = self.submit_queued(hang, 2)
        hang_sync = self.sync_in_background(hang)
        hung = wait_runner_count(self.stack, hang, 1, RUNNER_UP_S)[0]
        #  Its first timeout is logged, and the requests stay queued.
        timeout_re = re.compile(r'runner \S+ of %s not ready after 2 s' % re.escape(hang))
        wait_until(lambda: timeout_re.search(kiln_harness.tail(self.stack.log_path('broker'),
                                                               100000)),
                   10, what='the broker to log the startup timeout of %s' % hang)
        for request_id in hang_ids:
            status, obj = self.stack.queue_status(hang, request_id)
            self.assertEqual((status, obj.get('status')), (202, 'IN_QUEUE'), obj)

        cases = (('local/crashsetup', None),                       # abort() in setup()
                 ('local/badsetup', 'model weights not found'))    # kiln_setup_fail()
        failing = [(app, detail, self.submit_queued(app, 2), self.sync_in_background(app))
                   for app, detail in cases]
        for app, detail, ids, sync in failing:
            with self.subTest(app=app):
                self.check_failed(app, ids, sync, 'runner_server_error', detail)
                self.assertStartsBounded(app)
                wait_runner_count(self.stack, app, 0, KILLED_DEADLINE_S)

        with self.subTest(app=hang):
            self.check_failed(hang, hang_ids, hang_sync, 'startup_timeout', 'startup_timeout')
            self.assertStartsBounded(hang)
            #  Every runner stuck in setup() is killed, the first one included.
            wait_runner_count(self.stack, hang, 0, KILLED_DEADLINE_S)
            self.assertFalse(kiln_harness.alive(hung.pid))

        #  Nothing is queued any more: no more tries.
        apps = [hang] + [app for app, _ in cases]
        before = {app: self.starts_logged(app) for app in apps}
        time.sleep(1.5)
        self.assertEqual({app: self.starts_logged(app) for app in apps}, before)

    def assertStartsBounded(self, app):
        starts = self.starts_logged(app)
        self.assertGreaterEqual(starts, 2, '%s: a failed start was not tried again' % app)
        self.assertLessEqual(starts, 10, '%s: failed starts are not bounded' % app)

    # -- pending: live control and observability --------------------------------

    def test_failed_starts_are_reported_in_the_app_status(self):
        app = 'local/badsetup'
        [request_id] = self.submit_queued(app, 1)
        self.stack.wait_state(app, request_id, 'COMPLETED', STARTUP_FAILURE_DEADLINE_S)
        shown = self.stack.kiln('apps', 'show', app)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn('model weights not found', shown.stdout)
        shown = self.stack.kiln('apps', 'show', app, '--json')
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn('model weights not found', json.dumps(json.loads(shown.stdout)))

    def test_scale_changes_take_effect_without_a_redeploy(self):
        app = 'local/scaled'
        revision = self.stack.deploy(scaling_app('sleepmax3'), app)
        self.assertEqual(runners(self.stack, app), [])

        def scale(*args):
            result = self.stack.kiln('apps', 'scale', app, *args)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

        scale('--min', '2', '--max', '2', '--buffer', '0', '--keep-alive', '1')
        wait_runner_count(self.stack, app, 2, RUNNER_UP_S)
        #  The bounds changed, not the app: same revision, shown by apps show.
        with self.stack.redis() as r:
            self.assertEqual(int(r.command('HGET', 'kiln:app:' + app, 'revision')), revision)
        shown = self.stack.kiln('apps', 'show', app)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        #  Never past the new max under a burst
        with RunnerSampler(self.stack, app) as sampler:
            self.assertAllOk(burst(self.stack, '/' + app, [{'ms': 100} for _ in range(12)]))
        self.assertLessEqual(sampler.max(), 2)

        #  A lower min and a short keep_alive retire them.
        scale('--min', '0', '--max', '3', '--keep-alive', '1')
        wait_runner_count(self.stack, app, 0, RETIRE_DEADLINE_S)
        #  A buffer keeps spares above demand, with no traffic at all.
        scale('--buffer', '1')
        wait_runner_count(self.stack, app, 1, RUNNER_UP_S)
        scale('--buffer', '0')
        wait_runner_count(self.stack, app, 0, RETIRE_DEADLINE_S)

    def test_scale_refuses_bounds_that_make_no_sense(self):
        #  Sensible bounds are taken (the app's own, here)...
        result = self.stack.kiln('apps', 'scale', 'local/sleepmax3', '--max', '3')
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        #  ...others refused, with a reason.
        for args in (['--min', '3', '--max', '2'], ['--max', '-1'], ['--keep-alive', 'soon']):
            with self.subTest(args=args):
                result = self.stack.kiln('apps', 'scale', 'local/sleepmax3', *args)
                self.assertNotEqual(result.returncode, 0, result.stdout)
                self.assertTrue(result.stderr.strip())
        result = self.stack.kiln('apps', 'scale', 'local/nope', '--min', '1')
        self.assertNotEqual(result.returncode, 0, result.stdout)

    def test_kiln_runners_lists_every_runner(self):
        wait_runner_count(self.stack, 'local/keepalive', 1, RUNNER_UP_S)
        self.assertAllOk(burst(self.stack, '/local/sleepmax3', [{'ms': 0}]))
        found = runners(self.stack)
        self.assertTrue(found)

        #  The table shows ids short ("r-" and the UUID's first group);
        #  --json has them whole.
        def short(runner_id):
            return runner_id[:SHORT_ID_LEN]

        def listed():
            result = self.stack.kiln('runners')
            self.assertEqual(result.returncode, 0, result.stderr)
            return result.stdout if all(short(r.runner_id) in result.stdout
                                        for r in found) else None
        out = wait_until(listed, 5, what='kiln runners to list every runner')
        header = out.splitlines()[0].upper()
        for column in ('APP', 'WORKER', 'MACHINE', 'GPU', 'STATE', 'SERVED', 'IDLE'):
            self.assertIn(column, header)
        for runner in found:
            line = next(l for l in out.splitlines() if short(runner.runner_id) in l)
            self.assertIn(runner.app, line)
            self.assertIn(runner.worker, line)
            self.assertIn('CPU', line)
            self.assertRegex(line.lower(), r'\b(starting|ready|busy|draining)\b')

        #  --json: one object per runner, with the same facts
        result = self.stack.kiln('runners', '--json')
        self.assertEqual(result.returncode, 0, result.stderr)
        listed_json = json.loads(result.stdout)
        if isinstance(listed_json, dict):
            listed_json = listed_json.get('runners', [])
        by_id = {r.get('id') or r.get('runner_id'): r for r in listed_json}
        for runner in found:
            self.assertIn(runner.runner_id, by_id)
            self.assertEqual(by_id[runner.runner_id].get('app'), runner.app)

    def test_metrics_expose_runners_queues_outcomes_and_latency(self):
        wait_runner_count(self.stack, 'local/keepalive', 1, RUNNER_UP_S)
        self.assertAllOk(burst(self.stack, '/local/sleepmax3', [{'ms': 10} for _ in range(3)]))
        status, headers, body = self.stack.http('GET', '/metrics')
        self.assertEqual(status, 200)
        self.assertTrue(headers.get('content-type', '').startswith('text/plain'))
        text = body.decode()
        samples = [l for l in text.splitlines() if l and not l.startswith('#')]

        def having(*needles):
            return [l for l in samples if all(re.search(n, l) for n in needles)]
        #  Runners per app and state
        self.assertTrue(having(r'^kiln_\w*runners\w*\{', r'app="local/keepalive"',
                               r'state="\w+"'), text)
        #  Queue depth per app
        self.assertTrue(having(r'^kiln_\w*queue\w*\{', r'app="local/sleepmax3"'), text)
        #  Requests by outcome
        self.assertTrue(having(r'^kiln_\w*requests\w*\{', r'app="local/sleepmax3"',
                               r'(outcome|status|result|error_type)="'), text)
        #  Latency histograms (Prometheus: _bucket with le, _sum, _count)
        buckets = having(r'^kiln_\w*(latency|duration|seconds)\w*_bucket\{', r'le="')
        self.assertTrue(buckets, text)
        name = buckets[0].split('_bucket{')[0]
        self.assertTrue(having('^%s_sum' % name), text)
        self.assertTrue(having('^%s_count' % name), text)
        self.assertIn('# TYPE %s histogram' % name, text)


if __name__ == '__main__':
    kiln_harness.main()
