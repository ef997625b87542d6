"""scaling_helpers — what the runner lifecycle, autoscaling and placement
tests (test_scaling.py, test_placement.py) and bench/scale.py add to
kiln_harness: more workers on one stack, each with its own id, slots and
state dir; the runner processes of an app, read from /proc, and a thread
that samples them; bursts of concurrent calls; the lines the test apps
(tests/apps/scaling.c) leave in the workers' logs. Standard library only.

    class MyTest(scaling_helpers.ScalingTestCase):
        @classmethod
        def setUpClass(cls):
            cls.start_stack(worker_args=['--id', 'w-a', '--slots', 'CPU=2'])
            scaling_helpers.start_worker(cls.stack, 'w-b', 'CPU=2')
            scaling_helpers.wait_registered(cls.stack, 'w-a', 'w-b')
"""

import collections
import concurrent.futures
import json
import os
import re
import signal
import threading
import time

import kiln_harness
from kiln_harness import alive, all_pids, program, proc_environ, spawn, wait_until

#  How often a RunnerSampler looks at the runner processes.
SAMPLE_INTERVAL_S = 0.02
#  How long a worker gets to register with the broker.
REGISTER_TIMEOUT_S = 15

#  What tests/apps/scaling.c prints to stderr, which the worker logs.
SETUP_DONE_RE = re.compile(r'scaling: setup done in process (\d+) after (\d+) ms')
TEARDOWN_RE = re.compile(r'scaling: teardown in process (\d+) after serving (\d+) request')

#  One runner process, as /proc shows it.
Runner = collections.namedtuple('Runner', 'pid app worker runner_id cuda_visible_devices')


def scaling_app(name):
    """Path of a test app (build/test-apps/NAME.so)."""
    return kiln_harness.app_for_tests(name)


# ---------------------------------------------------------------------
#  Workers

def worker_name(worker_id):
    """The name an extra worker has in stack.procs (and its log's)."""
    return 'worker-' + worker_id


def start_worker(stack, worker_id, slots, extra_args=()):
    """Starts one more kiln-worker on the stack, with its own id, slots
    ("CPU=2", "GPU-H100=1") and state dir; it logs to
    <dir>/worker-ID.log. Returns its name in stack.procs (for
    stack.stop, stack.running, stack.pid)."""
    name = worker_name(worker_id)
    state_dir = os.path.join(stack.dir, 'state-' + worker_id)
    os.makedirs(state_dir, exist_ok=True)
    argv = [program('kiln-worker'), '--id', worker_id, '--slots', slots,
            '--state-dir', state_dir] + list(extra_args)
    stack.procs[name] = spawn(argv, stack.env, stack.log_path(name))
    stack.started_at[name] = time.monotonic()
    return name


def stop_extra_workers(stack, sig=signal.SIGTERM):
    """Stops every worker that start_worker started; returns problems
    (one line per worker that did not exit 0)."""
    problems = []
    for name in [n for n in stack.procs if n.startswith('worker-')]:
        status = stack.stop(name, sig)
        if status not in (None, 0):
            problems.append('%s exited with status %d on SIGTERM' % (name, status))
    return problems


def registered(stack, worker_id):
    """How many times the broker logged that worker_id registered."""
    pattern = re.compile(r'worker %s \([^)]*\) registered' % re.escape(worker_id))
    return len(pattern.findall(kiln_harness.tail(stack.log_path('broker'), 100000)))


def wait_registered(stack, *worker_ids, timeout=REGISTER_TIMEOUT_S):
    """Waits until the broker has logged each worker's registration."""
    for worker_id in worker_ids:
        wait_until(lambda: registered(stack, worker_id) > 0, timeout, interval=0.05,
                   what='worker %s to register with the broker' % worker_id)


class ScalingTestCase(kiln_harness.KilnTestCase):
    """A KilnTestCase whose stack may have extra workers (start_worker):
    they are stopped first at the end, and must exit 0 as well."""

    @classmethod
    def tearDownClass(cls):
        problems = stop_extra_workers(cls.stack) if cls.stack is not None else []
        try:
            super().tearDownClass()
        finally:
            if problems:
                raise AssertionError('; '.join(problems))


# ---------------------------------------------------------------------
#  Runner processes

def runners(stack, app=None):
    """Live runner processes of this stack (by their environment: its
    broker endpoint and a runner id), of app when given. Zombies and
    processes not yet exec'd as a runner do not count."""
    endpoint = stack.env['KILN_BROKER_ENDPOINT']
    found = []
    for pid in all_pids():
        env = proc_environ(pid)
        if not env.get('KILN_RUNNER_ID') or env.get('KILN_BROKER_ENDPOINT') != endpoint:
            continue
        if app is not None and env.get('KILN_APP') != app:
            continue
        if not alive(pid):
            continue
        found.append(Runner(pid, env.get('KILN_APP'), env.get('KILN_WORKER_ID'),
                            env.get('KILN_RUNNER_ID'), env.get('CUDA_VISIBLE_DEVICES')))
    return found


def runner_pids(stack, app):
    return sorted(r.pid for r in runners(stack, app))


def wait_runner_count(stack, app, count, timeout=10.0, what=None):
    """Waits until app has exactly count runner processes; returns them."""
    def reached():
        found = runners(stack, app)
        return found if len(found) == count else None
    if count == 0:
        wait_until(lambda: not runners(stack, app), timeout, interval=0.05,
                   what=what or 'every runner of %s to exit' % app)
        return []
    return wait_until(reached, timeout, interval=0.05,
                      what=what or '%d runner(s) of %s' % (count, app))


class RunnerSampler:
    """A thread that counts an app's runner processes every
    SAMPLE_INTERVAL_S until stopped: max() and samples afterwards.

        with RunnerSampler(stack, 'local/sleepmax3') as sampler:
            ... a burst ...
        self.assertLessEqual(sampler.max(), 3)
    """

    def __init__(self, stack, app, interval=SAMPLE_INTERVAL_S):
        self.stack = stack
        self.app = app
        self.interval = interval
        self.samples = []               # (monotonic time, runner count)
        self.pids = set()               # every runner pid seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            found = runners(self.stack, self.app)
            self.samples.append((time.monotonic(), len(found)))
            self.pids.update(r.pid for r in found)
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def max(self):
        return max((count for _, count in self.samples), default=0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------
#  Calls

def call(stack, path, payload, timeout=60.0, headers=None):
    """One sync call: (status, obj); obj is the decoded JSON answer, or
    the raw body when it is not JSON."""
    status, _, body = stack.http('POST', path, payload, headers=headers, timeout=timeout)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def burst(stack, path, payloads, concurrency=None, timeout=60.0):
    """Sends one sync call per payload, all at once (or concurrency at a
    time); returns [(status, obj)] in the order of payloads."""
    payloads = list(payloads)
    workers = concurrency or len(payloads) or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(call, stack, path, p, timeout) for p in payloads]
        return [f.result() for f in futures]


# ---------------------------------------------------------------------
#  Worker logs

def worker_logs(stack):
    """Text of every worker log of the stack (the first worker's and the
    extra ones'): runners write their stderr there."""
    text = []
    for name in sorted(os.listdir(stack.dir)):
        if name.startswith('worker') and name.endswith('.log'):
            with open(os.path.join(stack.dir, name), 'rb') as f:
                text.append(f.read().decode('utf-8', 'replace'))
    return '\n'.join(text)


def setups_done(stack):
    """{pid: setup ms} of every runner of a scaling.c app that finished
    its setup()."""
    return {int(m.group(1)): int(m.group(2)) for m in SETUP_DONE_RE.finditer(worker_logs(stack))}


def teardowns(stack):
    """{pid: requests served} of every runner of a scaling.c app that ran
    its teardown()."""
    return {int(m.group(1)): int(m.group(2)) for m in TEARDOWN_RE.finditer(worker_logs(stack))}
