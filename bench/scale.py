#!/usr/bin/env python3
"""bench/scale.py — how fast kiln starts runners and scales out (issue 4)

Starts its own stack (redis-server, kiln-broker, kiln-gateway and one
kiln-worker with --slots CPU=8, on free loopback ports in a temp dir, as
the integration tests do) and measures:

  cold start   the first call to an app that has no runner, less the time
               its setup() took (the app reports it), against the same
               call to the now warm runner: what kiln itself adds to
               start a runner (placement, spawn, load, hello, dispatch).
               The app is tests/apps/scaling.c built as "coldstart"
               (setup sleeps 500 ms); each sample deploys it under a new
               name so that no runner exists yet.
  scale-out    a burst of 1,000 queued requests of 50 ms each to an app
               with max_concurrency 8 ("scaleout"), submitted as fast as
               16 client threads can: time from the first submit to the
               last completion, against the ideal 1,000 x 50 ms / 8 =
               6.25 s. Twice: from no runner at all (cold), then again
               with the 8 runners already up (warm).

    python3 bench/scale.py [--build-dir build] [--samples 5]
                           [--requests 1000] [--ms 50]

Not part of ctest. Takes about 20 s; prints a report in Markdown.
"""

import argparse
import concurrent.futures
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE_DIR, 'tests'))

SLOTS = 'CPU=8'
MAX_CONCURRENCY = 8             # scaleout's, tests/apps/CMakeLists.txt
SUBMIT_THREADS = 16
DRAIN_TIMEOUT_S = 120
POLL_INTERVAL_S = 0.05


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--build-dir', default=os.environ.get('KILN_BUILD_DIR')
                        or os.path.join(SOURCE_DIR, 'build'))
    parser.add_argument('--samples', type=int, default=5, help='cold starts to measure')
    parser.add_argument('--requests', type=int, default=1000, help='requests in the burst')
    parser.add_argument('--ms', type=int, default=50, help='each request holds its runner this long')
    return parser.parse_args()


def timed_call(stack, path, payload):
    """A sync call: (seconds, answer object)."""
    started = time.monotonic()
    status, obj = scaling_helpers.call(stack, path, payload)
    elapsed = time.monotonic() - started
    if status != 200:
        raise RuntimeError('%s answered %d: %r' % (path, status, obj))
    return elapsed, obj


def cold_start(stack, samples):
    """[(cold s, setup s, warm s)] for each sample."""
    artifact = scaling_helpers.scaling_app('coldstart')
    rows = []
    for i in range(samples):
        app = 'local/cold-%d' % i
        stack.deploy(artifact, app)
        cold, first = timed_call(stack, '/' + app, {'ms': 0})
        warm, second = timed_call(stack, '/' + app, {'ms': 0})
        if first['pid'] != second['pid']:
            raise RuntimeError('%s: the warm call went to another runner' % app)
        rows.append((cold, first['setup_ms'] / 1000.0, warm))
        #  Gone before the next sample, and before the scale-out: its
        #  runner must not hold a slot the others need.
        deleted = stack.kiln('apps', 'delete', app)
        if deleted.returncode != 0:
            raise RuntimeError('kiln apps delete %s: %s' % (app, deleted.stderr))
        scaling_helpers.wait_runner_count(stack, app, 0, timeout=15)
    return rows


def scale_out(stack, app, count, ms):
    """Submits count queued requests of ms each, waits until they all
    completed; returns a dict of what it saw."""
    def submit(_):
        status, _, obj = stack.queue_submit('/' + app, {'ms': ms})
        if status != 200:
            raise RuntimeError('submit answered %d: %r' % (status, obj))
        return obj['request_id']

    sampler = scaling_helpers.RunnerSampler(stack, app, interval=0.1).start()
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            ids = list(pool.map(submit, range(count)))
        submitted = time.monotonic() - started
        with stack.redis() as r:
            while True:
                states = r.pipeline([('HGET', 'kiln:req:' + i, 'state') for i in ids])
                if all(s == b'COMPLETED' for s in states):
                    break
                if time.monotonic() - started > DRAIN_TIMEOUT_S:
                    raise RuntimeError('the burst did not drain in %d s' % DRAIN_TIMEOUT_S)
                time.sleep(POLL_INTERVAL_S)
            wall = time.monotonic() - started
            records = r.pipeline([('HMGET', 'kiln:req:' + i, 'status', 'created_ms',
                                   'started_ms', 'completed_ms') for i in ids])
    finally:
        sampler.stop()
    statuses = [int(rec[0]) for rec in records]
    created = [int(rec[1]) for rec in records]
    began = [int(rec[2]) for rec in records]
    completed = [int(rec[3]) for rec in records]
    waits = sorted(b - c for b, c in zip(began, created))
    return {
        'ok': sum(1 for s in statuses if s == 200),
        'count': count,
        'submitted_s': submitted,
        'wall_s': wall,
        #  Server clocks: first record to last completion.
        'drain_s': (max(completed) - min(created)) / 1000.0,
        'first_start_s': (min(began) - min(created)) / 1000.0,
        'wait_p50_s': waits[len(waits) // 2] / 1000.0,
        'wait_max_s': waits[-1] / 1000.0,
        'max_runners': sampler.max(),
        #  When the sampler first saw every runner process (0.1 s resolution).
        'all_up_s': min((t for t, n in sampler.samples if n == sampler.max()),
                        default=started) - started,
    }


def main():
    args = parse_args()
    os.environ['KILN_BUILD_DIR'] = args.build_dir
    global kiln_harness, scaling_helpers
    import kiln_harness             # noqa: E402 - after KILN_BUILD_DIR is set
    import scaling_helpers          # noqa: E402

    stack = kiln_harness.Stack(name='bench-scale', worker_args=['--slots', SLOTS])
    try:
        stack.start()
        stack.deploy(scaling_helpers.scaling_app('scaleout'), 'local/scaleout')

        print('# kiln scale bench\n')
        print('%s, %d cores, one worker with --slots %s, build %s\n'
              % (time.strftime('%Y-%m-%d'), os.cpu_count(), SLOTS, args.build_dir))

        rows = cold_start(stack, args.samples)
        print('## Cold start (setup() sleeps 500 ms; %d samples)\n' % len(rows))
        print('| sample | first call | its setup() | first call − setup | warm call | cold − setup − warm |')
        print('|---|---|---|---|---|---|')
        for i, (cold, setup, warm) in enumerate(rows):
            print('| %d | %.0f ms | %.0f ms | %.0f ms | %.1f ms | %.0f ms |'
                  % (i + 1, cold * 1e3, setup * 1e3, (cold - setup) * 1e3, warm * 1e3,
                     (cold - setup - warm) * 1e3))
        cold_m = statistics.median(c - s for c, s, _ in rows)
        warm_m = statistics.median(w for _, _, w in rows)
        print('| median | | | %.0f ms | %.1f ms | %.0f ms |\n'
              % (cold_m * 1e3, warm_m * 1e3, (cold_m - warm_m) * 1e3))

        ideal = args.requests * args.ms / 1000.0 / MAX_CONCURRENCY
        print('## Scale-out (%d requests of %d ms, max_concurrency %d; ideal %.2f s)\n'
              % (args.requests, args.ms, MAX_CONCURRENCY, ideal))
        print('| runners at start | ok | submit all | first start | drained in | ratio to ideal '
              '| queue wait p50 / max | most runners | all spawned after |')
        print('|---|---|---|---|---|---|---|---|---|')
        for label in ('none (cold)', '8 (warm)'):
            result = scale_out(stack, 'local/scaleout', args.requests, args.ms)
            print('| %s | %d/%d | %.2f s | %.2f s | %.2f s | %.2f | %.2f / %.2f s | %d | %.1f s |'
                  % (label, result['ok'], result['count'], result['submitted_s'],
                     result['first_start_s'], result['drain_s'], result['drain_s'] / ideal,
                     result['wait_p50_s'], result['wait_max_s'], result['max_runners'],
                     result['all_up_s']))
            sys.stdout.flush()
        print()
    finally:
        problems = stack.close()
        if problems:
            print('problems: ' + '; '.join(problems), file=sys.stderr)


if __name__ == '__main__':
    main()
