#!/usr/bin/env python3
"""deep_queue — the queue API's submit rate, and status latency with a
deep queue (issue 3).

    python3 bench/deep_queue.py [--submits 20000] [--clients 8] [--depth 1000000]
                                [--samples 2000]

Starts its own redis-server and kiln-gateway (from KILN_BUILD_DIR, default
build/) in a temp dir, with no broker and no worker, so that every
request stays queued, and deploys the slowlog test app under a few names.
Then:

1. submit rate: --submits queue submits over HTTP (keep-alive) from
   --clients processes; submits per second and each submit's latency.
2. status latency: GET .../status for a request at the head and at the
   tail of a queue --depth deep (filled by pipelining the real SUBMIT
   script, read from shared/kiln_scripts.c, straight into Redis), against
   the same for a request alone in its queue, in the same run.
3. Redis time per status: SLOWLOG with a threshold of 0 while the gateway
   answers statuses, and a client-side timing of the ZRANK + HMGET pair
   that a status needs.

Not part of ctest (it takes a couple of minutes and a GB of Redis memory).
"""

import argparse
import hashlib
import http.client
import json
import multiprocessing
import os
import re
import statistics
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE_DIR, 'tests'))

import kiln_harness                                     # noqa: E402

#  SUBMIT commands per pipeline round trip while filling the deep queue.
FILL_BATCH = 5000
#  SLOWLOG entries kept while measuring Redis time (per status: a few).
SLOWLOG_MAX_LEN = 100000
#  Status calls per case before measuring, and rounds the measured ones
#  are spread over.
WARM_UP_SAMPLES = 300
ROUNDS = 10


def submit_script():
    """KILN_SCRIPT_SUBMIT's text, as the C compiler sees it."""
    with open(os.path.join(SOURCE_DIR, 'shared', 'kiln_scripts.c')) as f:
        source = f.read()
    match = re.search(r'const char \*KILN_SCRIPT_SUBMIT\s*=\s*(.*?);\n', source, re.S)
    if not match:
        raise SystemExit('KILN_SCRIPT_SUBMIT not found in shared/kiln_scripts.c')
    #  Adjacent C string literals, with only \n and \" escapes in them
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', match.group(1))
    return ''.join(bytes(lit, 'utf-8').decode('unicode_escape') for lit in literals)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def summary_ms(seconds):
    ms = [s * 1000 for s in seconds]
    return 'median %.3f ms, p99 %.3f ms' % (statistics.median(ms), percentile(ms, 0.99))


# -- 1. submit rate ----------------------------------------------------------

def _submitter(args):
    """One client process: count submits on one keep-alive connection;
    their latencies (s)."""
    port, path, count = args
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    body = json.dumps({'lines': 1, 'interval_ms': 0})
    headers = {'Content-Type': 'application/json'}
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request('POST', path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        latencies.append(time.perf_counter() - started)
        if resp.status != 200:
            raise RuntimeError('submit answered %d: %r' % (resp.status, data[:200]))
    conn.close()
    return latencies


def submit_rate(stack, app, total, clients):
    per_client = total // clients
    work = [(stack.http_port, '/queue/' + app, per_client)] * clients
    with multiprocessing.get_context('fork').Pool(clients) as pool:
        started = time.perf_counter()
        results = pool.map(_submitter, work)
        elapsed = time.perf_counter() - started
    latencies = [s for r in results for s in r]
    return len(latencies), elapsed, latencies


# -- 2. the deep queue -------------------------------------------------------

def fill_queue(stack, app, depth, sha):
    """Queues depth requests of app straight into Redis with the real
    SUBMIT script; returns the ids of the first and last."""
    app_key, queue_key = 'kiln:app:' + app, 'kiln:queue:' + app
    body = json.dumps({'lines': 1, 'interval_ms': 0})
    now = str(int(time.time() * 1000))
    first = last = None
    with stack.redis() as r:
        done = 0
        while done < depth:
            batch = []
            for _ in range(min(FILL_BATCH, depth - done)):
                request_id = str(uuid.uuid4())
                first = first or request_id
                last = request_id
                batch.append(('EVALSHA', sha, '4', app_key, 'kiln:req:' + request_id, queue_key,
                              'kiln:seq', request_id, app, '/', 'application/json', body,
                              'normal', '', '', now, '0', '0'))
            for reply in r.pipeline(batch):
                if isinstance(reply, Exception) or reply < 0:
                    raise SystemExit('SUBMIT failed while filling the queue: %r' % (reply,))
            done += len(batch)
        queued = r.command('ZCARD', queue_key)
    if queued != depth:
        raise SystemExit('the queue holds %d requests, not %d' % (queued, depth))
    return first, last


def status_latency(stack, app, request_id, samples):
    """samples GET .../status on one keep-alive connection: latencies (s)
    and the queue position answered."""
    conn = http.client.HTTPConnection('127.0.0.1', stack.http_port, timeout=30)
    path = '/queue/%s/requests/%s/status' % (app, request_id)
    latencies, position = [], None
    for _ in range(samples):
        started = time.perf_counter()
        conn.request('GET', path)
        resp = conn.getresponse()
        data = resp.read()
        latencies.append(time.perf_counter() - started)
        if resp.status != 202:
            raise SystemExit('status answered %d: %r' % (resp.status, data[:200]))
        position = json.loads(data).get('queue_position')
    conn.close()
    return latencies, position


def redis_time_per_status(stack, app, request_id, samples):
    """Redis's own time (SLOWLOG, threshold 0) for the commands the gateway
    sends while answering samples statuses: {command: [µs]}, and µs per
    status in all."""
    with stack.redis() as r:
        r.command('CONFIG', 'SET', 'slowlog-max-len', str(SLOWLOG_MAX_LEN))
        r.command('CONFIG', 'SET', 'slowlog-log-slower-than', '0')
        r.command('SLOWLOG', 'RESET')
        status_latency(stack, app, request_id, samples)
        entries = r.command('SLOWLOG', 'GET', str(SLOWLOG_MAX_LEN))
        r.command('CONFIG', 'SET', 'slowlog-log-slower-than', '10000')
    by_command = {}
    for entry in entries:
        #  [id, timestamp, µs, [args...], client addr, client name]
        args = [a.decode('utf-8', 'replace') for a in entry[3]]
        if not args or args[0].upper() in ('SLOWLOG', 'CONFIG', 'CLIENT'):
            continue
        by_command.setdefault(args[0].upper(), []).append(entry[2])
    total = sum(sum(v) for v in by_command.values())
    return by_command, total / samples


def pair_timing(stack, app, request_id, samples):
    """Client-side round trip of the ZRANK + HMGET a status needs, in one
    MULTI/EXEC pipeline (µs), minus nothing: an upper bound on Redis's time."""
    timings = []
    with stack.redis() as r:
        for _ in range(samples):
            started = time.perf_counter()
            r.pipeline([('MULTI',), ('HMGET', 'kiln:req:' + request_id, 'app', 'state'),
                        ('ZRANK', 'kiln:queue:' + app, request_id), ('EXEC',)])
            timings.append((time.perf_counter() - started) * 1e6)
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--submits', type=int, default=20000)
    parser.add_argument('--clients', type=int, default=8)
    parser.add_argument('--depth', type=int, default=1000000)
    parser.add_argument('--samples', type=int, default=2000)
    args = parser.parse_args()

    stack = kiln_harness.Stack(name='bench')
    try:
        stack.start_redis()
        stack.start_gateway()
        for app in ('bench/rate', 'bench/deep', 'bench/alone'):
            stack.deploy(kiln_harness.app_for_tests('slowlog'), app)
        print('kiln deep-queue bench: %d CPU(s), gateway and redis-server on loopback, '
              'no broker (requests stay queued)' % os.cpu_count())

        count, elapsed, latencies = submit_rate(stack, 'bench/rate', args.submits, args.clients)
        print('\n1. submit rate: %d queue submits over HTTP from %d client processes in %.2f s'
              % (count, args.clients, elapsed))
        print('   %.0f submits/s; each submit %s' % (count / elapsed, summary_ms(latencies)))

        script = submit_script()
        sha = hashlib.sha1(script.encode()).hexdigest()
        with stack.redis() as r:
            same = r.command('SCRIPT', 'EXISTS', sha)[0] == 1
            loaded = r.command('SCRIPT', 'LOAD', script).decode()
        assert loaded == sha
        if not same:
            print('   (warning: the gateway did not run this SUBMIT text; '
                  'shared/kiln_scripts.c and the build differ)')

        started = time.perf_counter()
        head, tail = fill_queue(stack, 'bench/deep', args.depth, sha)
        fill_s = time.perf_counter() - started
        alone, _ = fill_queue(stack, 'bench/alone', 1, sha)
        with stack.redis() as r:
            used_mb = int(re.search(rb'used_memory:(\d+)', r.command('INFO', 'memory')).group(1)) / 2**20
        print('\n2. status latency: %d requests queued in %.1f s (%.0f SUBMIT/s pipelined; '
              'Redis uses %.0f MB); %d GET status each'
              % (args.depth, fill_s, args.depth / fill_s, used_mb, args.samples))
        cases = (('alone in its queue', 'bench/alone', alone),
                 ('head of the deep queue', 'bench/deep', head),
                 ('tail of the deep queue', 'bench/deep', tail))
        for _, app, request_id in cases:
            status_latency(stack, app, request_id, WARM_UP_SAMPLES)
        #  In interleaved rounds, so that a drift in the machine's load
        #  weighs on every case alike
        latencies = {label: [] for label, _, _ in cases}
        positions = {}
        for _ in range(ROUNDS):
            for label, app, request_id in cases:
                some, positions[label] = status_latency(stack, app, request_id,
                                                        max(1, args.samples // ROUNDS))
                latencies[label].extend(some)
        results = {}
        for label, _, _ in cases:
            results[label] = statistics.median(latencies[label])
            print('   %-24s position %7d: %s' % (label, positions[label], summary_ms(latencies[label])))
        base = results['alone in its queue']
        print('   tail / alone (medians): %.2f; head / alone: %.2f'
              % (results['tail of the deep queue'] / base, results['head of the deep queue'] / base))

        print('\n3. Redis time per status (SLOWLOG, threshold 0; µs per command):')
        for label, app, request_id in (('alone in its queue', 'bench/alone', alone),
                                       ('tail of the deep queue', 'bench/deep', tail)):
            by_command, per_status = redis_time_per_status(stack, app, request_id, args.samples)
            parts = ', '.join('%s median %.1f p99 %.1f' % (name, statistics.median(us), percentile(us, 0.99))
                              for name, us in sorted(by_command.items()))
            print('   %-24s %.1f µs of Redis time per status (%s)' % (label, per_status, parts))
        for label, app, request_id in (('alone in its queue', 'bench/alone', alone),
                                       ('tail of the deep queue', 'bench/deep', tail)):
            timings = pair_timing(stack, app, request_id, args.samples)
            print('   client round trip of MULTI HMGET ZRANK EXEC, %-24s median %.1f µs, p99 %.1f µs'
                  % (label + ':', statistics.median(timings), percentile(timings, 0.99)))
    finally:
        problems = stack.close()
        if problems:
            print('problems: ' + '; '.join(problems), file=sys.stderr)


if __name__ == '__main__':
    main()
