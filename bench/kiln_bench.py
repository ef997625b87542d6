#!/usr/bin/env python3
"""kiln_bench — kiln side by side with what a user would pick instead (issue 8)

`make bench` runs it (after installing wrk, nginx, gnuplot, Node.js and
BullMQ, and building kiln). Every scenario starts its own processes on
free loopback ports in temp dirs (tests/kiln_harness.py) and stops them:

  1 sync        the echo example through kiln against nginx `return 200`
                with the same body, under the same wrk load (POST, same
                JSON body) at concurrency 1, 16, 256
  2 async       N no-op requests submitted (wrk) and completed through
                kiln's queue API, against N no-op BullMQ jobs (Node.js
                producer with addBulk, a Worker with kiln's concurrency,
                their own redis-server of the same binary)
  3 cold start  bench/scale.py's measure: first call to an app with no
                runner, less its setup()
  4 scale-out   bench/scale.py's burst: 1,000 x 50 ms, max_concurrency 8
  5 deep queue  bench/deep_queue.py's submit rate and status latency with
                a million queued
  6 footprint   RSS of gateway, broker and a runner, idle and with 10,000
                sync calls waiting at once
  profile       (full mode) perf of kiln's processes under the sync and
                async loads: where the time goes

Scenarios 1 and 2 alternate kiln and its reference for BENCH_ROUNDS
rounds and report medians and the kiln/reference ratio. Results go to
bench/results/ (REPORT.md, *.png, raw.json); the table is printed.

Environment: BENCH_QUICK=1 (small N, one round: a smoke run in a couple
of minutes), BENCH_ROUNDS (3), BENCH_ASYNC_N (100000), BENCH_DEEP_N
(1000000), BENCH_DURATION_S (wrk seconds per sync run: 8, quick 2),
BENCH_SCENARIOS (e.g. "sync,async": a subset), BENCH_PROFILE (0/1;
default on in full mode), KILN_BUILD_DIR (default build/).

    python3 bench/kiln_bench.py             run, write bench/results/
    python3 bench/kiln_bench.py --report    only write REPORT.md and the
                                            charts again from raw.json
"""

import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, 'results')
sys.path.insert(0, os.path.join(SOURCE_DIR, 'tests'))
sys.path.insert(0, HERE)

QUICK = os.environ.get('BENCH_QUICK', '') not in ('', '0')
ROUNDS = int(os.environ.get('BENCH_ROUNDS') or (1 if QUICK else 3))
ASYNC_N = int(os.environ.get('BENCH_ASYNC_N') or (5000 if QUICK else 100000))
DEEP_N = int(os.environ.get('BENCH_DEEP_N') or (20000 if QUICK else 1000000))
DURATION_S = int(os.environ.get('BENCH_DURATION_S') or (2 if QUICK else 8))
PROFILE = os.environ.get('BENCH_PROFILE', '0' if QUICK else '1') not in ('', '0')
ALL_SCENARIOS = ('sync', 'async', 'coldstart', 'scaleout', 'deep', 'footprint', 'profile')
SCENARIOS = [s.strip() for s in (os.environ.get('BENCH_SCENARIOS') or ','.join(ALL_SCENARIOS)).split(',')
             if s.strip()]

SYNC_CONCURRENCY = (1, 16, 256)
#  The body every sync request carries, to kiln and to nginx alike.
SYNC_BODY = '{"prompt":"a red fox in the snow","steps":4,"seed":42}'
WRK_TIMEOUT_S = 30
#  Async: how many requests kiln runs at once (the noop variant's
#  max_concurrency x max_multiplexing), which BullMQ's worker matches.
ASYNC_RUNNERS = 2
ASYNC_MULTIPLEXING = 8
ASYNC_CONCURRENCY = ASYNC_RUNNERS * ASYNC_MULTIPLEXING
ASYNC_SUBMIT_CONNECTIONS = 64
ASYNC_DRAIN_TIMEOUT_S = 600
POLL_INTERVAL_S = 0.02
#  Footprint: calls held open at once, each waiting for a sleeping app.
FOOTPRINT_CALLS = int(os.environ.get('BENCH_FOOTPRINT_CALLS') or (2000 if QUICK else 10000))
FOOTPRINT_SLEEP_MS = 90000
FOOTPRINT_SETTLE_TIMEOUT_S = 60
#  Scale and cold start (bench/scale.py's measures)
COLD_SAMPLES = 2 if QUICK else 5
SCALE_REQUESTS = 200 if QUICK else 1000
SCALE_MS = 50
#  Deep queue (bench/deep_queue.py's measures)
DEEP_SUBMITS = 2000 if QUICK else 20000
DEEP_CLIENTS = 8
DEEP_STATUS_SAMPLES = 300 if QUICK else 2000
PROFILE_SECONDS = 6

#  The targets, each: (key, text, test on the measured value)
MIB = 1024 * 1024


def log(message):
    sys.stderr.write('[bench %s] %s\n' % (time.strftime('%H:%M:%S'), message))
    sys.stderr.flush()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def raise_fd_limit():
    """The footprint scenario holds 10,000 connections: the client and
    the gateway (which inherits this limit) need that many descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_json(argv, timeout, env=None):
    """Runs a load generator that ends with a `BENCH_JSON {...}` line;
    returns that object (RuntimeError with its output when it has none)."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    for line in result.stdout.splitlines():
        if line.startswith('BENCH_JSON '):
            return json.loads(line[len('BENCH_JSON '):])
    raise RuntimeError('%s printed no result (exit %d):\n%s%s' % (
        argv[0], result.returncode, result.stdout[-2000:], result.stderr[-2000:]))


def proc_cpu_s(pid):
    """User + system CPU seconds a process has used so far."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(')') + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def proc_memory(pid):
    """(VmRSS, VmHWM) of a process in bytes, or (None, None)."""
    rss = hwm = None
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith('VmHWM:'):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def build_noop(build_dir, out_dir, name, runners, multiplexing):
    """Builds bench/apps/noop.c as out_dir/name.so with those bounds."""
    path = os.path.join(out_dir, name + '.so')
    subprocess.run(['cc', '-shared', '-fPIC', '-O2', '-fvisibility=hidden',
                    '-I', os.path.join(SOURCE_DIR, 'include'),
                    '-DNOOP_MAX=%d' % runners, '-DNOOP_MULTIPLEXING=%d' % multiplexing,
                    os.path.join(HERE, 'apps', 'noop.c'), '-o', path], check=True)
    return path


class KilnProcesses:
    """CPU time of a stack's processes (gateway, broker, runners, redis)
    over a stretch of load: cpu_ms_per(count) after stop()."""

    def __init__(self, stack, app):
        self.pids = {'gateway': stack.pid('gateway'), 'redis': stack.pid('redis')}
        if 'broker' in stack.procs:
            self.pids['broker'] = stack.pid('broker')
        for i, pid in enumerate(sorted(stack.runner_pids(app)) if app else []):
            self.pids['runner%d' % (i + 1)] = pid
        self.before = self.after = None

    def start(self):
        self.before = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        return self

    def stop(self):
        self.after = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        return self

    def cpu_ms_per(self, count):
        """{process: CPU ms per request}; runners summed as 'runners'."""
        out = {}
        for name in self.pids:
            if self.before.get(name) is None or self.after.get(name) is None or not count:
                continue
            key = 'runners' if name.startswith('runner') else name
            out[key] = out.get(key, 0.0) + (self.after[name] - self.before[name]) * 1000.0 / count
        return out


# ---------------------------------------------------------------------------
#  1. sync: kiln's echo against nginx `return 200`

NGINX_CONF = """\
# generated by bench/kiln_bench.py: the HTTP ceiling, `return 200` with echo's body
{user}
worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_body_buffer_size 64k;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 '{body}'; }}
    }}
}}
"""


def nginx_binary():
    for path in (shutil.which('nginx'), '/usr/sbin/nginx'):
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError('nginx is not installed (scripts/install-bench-deps.sh installs it)')


def start_nginx(directory, port, body):
    if "'" in body or '\\' in body:
        raise RuntimeError('the echo body cannot go into nginx.conf as is: %r' % body)
    conf = os.path.join(directory, 'nginx.conf')
    with open(conf, 'w') as f:
        f.write(NGINX_CONF.format(dir=directory, port=port, body=body,
                                  user='user root;' if os.geteuid() == 0 else ''))
    proc = kiln_harness.spawn([nginx_binary(), '-p', directory, '-c', conf],
                              os.environ, os.path.join(directory, 'nginx.log'))

    def answers():
        if proc.poll() is not None:
            raise AssertionError('nginx exited: ' + kiln_harness.tail(os.path.join(directory, 'nginx.log')))
        return kiln_harness.http_request(port, 'POST', '/', SYNC_BODY, timeout=2)[0] == 200
    kiln_harness.wait_until(answers, 10, what='nginx to answer')
    return proc


def wrk(url, concurrency, duration_s, script, args=(), env=None, timeout_extra=60):
    threads = max(1, min(2, concurrency))
    argv = ['wrk', '-t', str(threads), '-c', str(concurrency), '-d', '%ds' % duration_s,
            '--timeout', '%ds' % WRK_TIMEOUT_S, '--latency', '-s', script, url]
    if args:
        argv += ['--'] + [str(a) for a in args]
    return run_json(argv, duration_s + timeout_extra, env=env)


def scenario_sync(build_dir):
    stack = kiln_harness.Stack(name='bench-sync')
    nginx = None
    post_lua = os.path.join(HERE, 'wrk', 'post.lua')
    env = dict(os.environ, BENCH_BODY=SYNC_BODY)
    runs = {}
    cpu = {c: [] for c in SYNC_CONCURRENCY}
    try:
        stack.start()
        stack.deploy(kiln_harness.example('echo'), 'local/echo')
        #  Both runners up before measuring: this is about the call, not scaling.
        stack.kiln('apps', 'scale', 'local/echo', '--min', '2')
        status, _, body = stack.http('POST', '/local/echo', SYNC_BODY,
                                     headers={'Content-Type': 'application/json'}, timeout=60)
        if status != 200:
            raise RuntimeError('echo answered %d: %r' % (status, body[:200]))
        body = body.decode()
        kiln_harness.wait_until(lambda: len(stack.runner_pids('local/echo')) == 2, 30,
                                what='two echo runners')
        nginx_dir = os.path.join(stack.dir, 'nginx')
        os.makedirs(nginx_dir)
        nginx_port = kiln_harness.free_port()
        nginx = start_nginx(nginx_dir, nginx_port, body)
        urls = {'kiln': stack.url + '/local/echo', 'nginx': 'http://127.0.0.1:%d/' % nginx_port}
        log('sync: warming up both')
        for side in ('kiln', 'nginx'):
            wrk(urls[side], 16, 1, post_lua, env=env)
        for r in range(ROUNDS):
            for c in SYNC_CONCURRENCY:
                order = ('kiln', 'nginx') if (r + SYNC_CONCURRENCY.index(c)) % 2 == 0 else ('nginx', 'kiln')
                for side in order:
                    meter = KilnProcesses(stack, 'local/echo').start() if side == 'kiln' else None
                    result = wrk(urls[side], c, DURATION_S, post_lua, env=env)
                    if meter:
                        cpu[c].append(meter.stop().cpu_ms_per(result['requests']))
                    result['rps'] = result['requests'] / (result['duration_us'] / 1e6)
                    runs.setdefault((side, c), []).append(result)
                    log('sync round %d c=%d %s: %.0f req/s, p50 %.3f ms, p99 %.3f ms, %d non-2xx, %d errors'
                        % (r + 1, c, side, result['rps'], result['p50_us'] / 1e3, result['p99_us'] / 1e3,
                           result['errors_status'], result['errors_connect'] + result['errors_read']
                           + result['errors_write'] + result['errors_timeout']))
        out = {'request_bytes': len(SYNC_BODY), 'body_bytes': len(body), 'rows': []}
        for c in SYNC_CONCURRENCY:
            row = {'concurrency': c}
            for side in ('kiln', 'nginx'):
                rs = runs[(side, c)]
                row[side] = {
                    'rps': median(x['rps'] for x in rs),
                    'p50_ms': median(x['p50_us'] / 1e3 for x in rs),
                    'p99_ms': median(x['p99_us'] / 1e3 for x in rs),
                    'non2xx': sum(x['errors_status'] for x in rs),
                    'errors': sum(x['errors_connect'] + x['errors_read'] + x['errors_write']
                                  + x['errors_timeout'] for x in rs),
                    'rounds_rps': [round(x['rps']) for x in rs],
                }
            row['ratio_rps'] = row['kiln']['rps'] / row['nginx']['rps']
            row['overhead_p50_ms'] = row['kiln']['p50_ms'] - row['nginx']['p50_ms']
            row['cpu_ms_per_request'] = {k: median(d.get(k) for d in cpu[c])
                                         for k in ('gateway', 'broker', 'runners', 'redis')}
            out['rows'].append(row)
        return out
    finally:
        if nginx is not None:
            kiln_harness.stop_process(nginx, signal.SIGQUIT)
        stack.close()


# ---------------------------------------------------------------------------
#  2. async: kiln's queue API against BullMQ

def redis_int(r, *command):
    value = r.command(*command)
    return int(value) if value is not None else 0


def kiln_async_round(stack, app, n):
    """Submits about n queue requests with wrk and waits until kiln has
    completed all it queued; returns what it saw."""
    submit_lua = os.path.join(HERE, 'wrk', 'submit.lua')
    stats_key = 'kiln:stats:' + app
    per_thread = (n + 1) // 2
    with stack.redis() as r:
        seq0 = redis_int(r, 'GET', 'kiln:seq')
        done0 = redis_int(r, 'HGET', stats_key, 'latency_count')
        ok0 = redis_int(r, 'HGET', stats_key, 'status:200')
        meter = KilnProcesses(stack, app).start()
        started = time.time()
        argv = ['wrk', '-t', '2', '-c', str(ASYNC_SUBMIT_CONNECTIONS), '-d', '%ds' % ASYNC_DRAIN_TIMEOUT_S,
                '--timeout', '%ds' % WRK_TIMEOUT_S, '-s', submit_lua,
                stack.url + '/queue/' + app, '--', str(per_thread)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        submitted = None
        submit_s = None
        while True:
            done = redis_int(r, 'HGET', stats_key, 'latency_count') - done0
            now = time.time()
            #  wrk runs for its whole -d even when its threads stopped:
            #  SIGINT ends it (it still prints its summary) once n are queued.
            if submitted is None and (proc.poll() is not None
                                      or redis_int(r, 'GET', 'kiln:seq') - seq0 >= n):
                submit_s = now - started
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                proc.wait(30)
                time.sleep(0.1)         #  what wrk left in flight reaches SUBMIT
                submitted = redis_int(r, 'GET', 'kiln:seq') - seq0
                done = redis_int(r, 'HGET', stats_key, 'latency_count') - done0
            if submitted is not None and done >= submitted:
                break
            if now - started > ASYNC_DRAIN_TIMEOUT_S:
                proc.kill()
                raise RuntimeError('kiln completed %d of %s in %d s' % (done, submitted, ASYNC_DRAIN_TIMEOUT_S))
            time.sleep(POLL_INTERVAL_S)
        elapsed = time.time() - started
        meter.stop()
        ok = redis_int(r, 'HGET', stats_key, 'status:200') - ok0
    out, err = proc.communicate()
    result = None
    for line in out.splitlines():
        if line.startswith('BENCH_JSON '):
            result = json.loads(line[len('BENCH_JSON '):])
    if result is None:
        raise RuntimeError('wrk printed no result:\n' + out[-2000:] + err[-2000:])
    return {'n': submitted, 'ok': ok, 'seconds': elapsed, 'rate': submitted / elapsed,
            'submit_rate': submitted / submit_s, 'refused': result['errors_status'],
            'submit_p50_ms': result['p50_us'] / 1e3, 'submit_p99_ms': result['p99_us'] / 1e3,
            'cpu_ms_per_request': meter.cpu_ms_per(submitted)}


def bullmq_round(port, redis_pid, queue, n):
    node_dir = os.path.join(HERE, 'node')
    script = os.path.join(node_dir, 'bullmq_bench.js')
    with kiln_harness.Redis(port) as r:
        r.command('FLUSHALL')
    redis_cpu0 = proc_cpu_s(redis_pid)
    worker = subprocess.Popen(['node', script, 'worker', str(port), queue, str(n), str(ASYNC_CONCURRENCY)],
                              cwd=node_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = worker.stdout.readline()
        if line.strip() != 'READY':
            raise RuntimeError('the BullMQ worker did not start: %r %s' % (line, worker.stderr.read()[-2000:]))
        produced = run_json(['node', script, 'producer', str(port), queue, str(n)],
                            ASYNC_DRAIN_TIMEOUT_S, env=dict(os.environ, NODE_PATH=os.path.join(node_dir, 'node_modules')))
        done = None
        deadline = time.time() + ASYNC_DRAIN_TIMEOUT_S
        for line in worker.stdout:
            if line.startswith('BENCH_JSON '):
                done = json.loads(line[len('BENCH_JSON '):])
                break
            if time.time() > deadline:
                break
        if done is None:
            raise RuntimeError('the BullMQ worker did not finish: %s' % worker.stderr.read()[-2000:])
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    seconds = (done['done_ms'] - produced['start_ms']) / 1000.0
    return {'n': n, 'ok': done['completed'], 'seconds': seconds, 'rate': n / seconds,
            'submit_rate': n / max(0.001, (produced['end_ms'] - produced['start_ms']) / 1000.0),
            'redis_cpu_ms_per_request': (proc_cpu_s(redis_pid) - redis_cpu0) * 1000.0 / n}


def scenario_async(build_dir):
    stack = kiln_harness.Stack(name='bench-async')
    bull_redis = None
    try:
        stack.start()
        noop = build_noop(build_dir, stack.dir, 'noop', ASYNC_RUNNERS, ASYNC_MULTIPLEXING)
        app = 'bench/noop'
        stack.deploy(noop, app)
        stack.kiln('apps', 'scale', app, '--min', str(ASYNC_RUNNERS))
        kiln_harness.wait_until(lambda: len(stack.runner_pids(app)) == ASYNC_RUNNERS, 30,
                                what='the noop runners')
        bull_port = kiln_harness.free_port()
        bull_dir = os.path.join(stack.dir, 'bullmq-redis')
        os.makedirs(bull_dir)
        bull_redis = kiln_harness.spawn(
            ['redis-server', '--port', str(bull_port), '--bind', '127.0.0.1', '--save', '',
             '--appendonly', 'no', '--dir', bull_dir], os.environ, os.path.join(stack.dir, 'bullmq-redis.log'))
        def pong():
            with kiln_harness.Redis(bull_port) as r:
                return r.command('PING') == 'PONG'
        kiln_harness.wait_until(pong, 10, what='the BullMQ redis-server')
        log('async: warming up both')
        kiln_async_round(stack, app, min(2000, ASYNC_N))
        bullmq_round(bull_port, bull_redis.pid, 'warmup', min(2000, ASYNC_N))
        runs = {'kiln': [], 'bullmq': []}
        for r in range(ROUNDS):
            order = ('kiln', 'bullmq') if r % 2 == 0 else ('bullmq', 'kiln')
            for side in order:
                if side == 'kiln':
                    result = kiln_async_round(stack, app, ASYNC_N)
                else:
                    result = bullmq_round(bull_port, bull_redis.pid, 'bench%d' % r, ASYNC_N)
                runs[side].append(result)
                log('async round %d %s: %d completed in %.2f s: %.0f/s (submits %.0f/s)'
                    % (r + 1, side, result['n'], result['seconds'], result['rate'], result['submit_rate']))
        with stack.redis() as r:
            memory = r.command('INFO', 'memory').decode()
        out = {'n': ASYNC_N, 'concurrency': ASYNC_CONCURRENCY, 'runs': runs}
        for side in runs:
            out[side] = {'rate': median(x['rate'] for x in runs[side]),
                         'submit_rate': median(x['submit_rate'] for x in runs[side]),
                         'seconds': median(x['seconds'] for x in runs[side]),
                         'ok': sum(x['ok'] for x in runs[side]),
                         'n': sum(x['n'] for x in runs[side])}
        out['kiln']['cpu_ms_per_request'] = {
            k: median(x['cpu_ms_per_request'].get(k) for x in runs['kiln'])
            for k in ('gateway', 'broker', 'runners', 'redis')}
        out['kiln']['submit_p50_ms'] = median(x['submit_p50_ms'] for x in runs['kiln'])
        out['bullmq']['redis_cpu_ms_per_request'] = median(x['redis_cpu_ms_per_request'] for x in runs['bullmq'])
        out['ratio'] = out['kiln']['rate'] / out['bullmq']['rate']
        out['kiln_redis_used_mb'] = int(re.search(r'used_memory:(\d+)', memory).group(1)) / MIB
        return out
    finally:
        if bull_redis is not None:
            kiln_harness.stop_process(bull_redis)
        stack.close()


# ---------------------------------------------------------------------------
#  3, 4. cold start and scale-out: bench/scale.py's measures

def scale_stack():
    import scale
    import scaling_helpers
    scale.kiln_harness, scale.scaling_helpers = kiln_harness, scaling_helpers
    stack = kiln_harness.Stack(name='bench-scale', worker_args=['--slots', scale.SLOTS])
    stack.start()
    return scale, scaling_helpers, stack


def scenario_coldstart(build_dir):
    scale, _, stack = scale_stack()
    try:
        rows = scale.cold_start(stack, COLD_SAMPLES)
    finally:
        stack.close()
    samples = [{'cold_ms': c * 1e3, 'setup_ms': s * 1e3, 'warm_ms': w * 1e3,
                'added_ms': (c - s - w) * 1e3} for c, s, w in rows]
    for i, s in enumerate(samples):
        log('cold start %d: first call %.0f ms, setup %.0f ms, warm %.1f ms: kiln adds %.1f ms'
            % (i + 1, s['cold_ms'], s['setup_ms'], s['warm_ms'], s['added_ms']))
    return {'samples': samples,
            'cold_minus_setup_ms': median(s['cold_ms'] - s['setup_ms'] for s in samples),
            'warm_ms': median(s['warm_ms'] for s in samples),
            'added_ms': median(s['added_ms'] for s in samples)}


def scenario_scaleout(build_dir):
    scale, scaling_helpers, stack = scale_stack()
    try:
        stack.deploy(scaling_helpers.scaling_app('scaleout'), 'local/scaleout')
        ideal = SCALE_REQUESTS * SCALE_MS / 1000.0 / scale.MAX_CONCURRENCY
        rows = []
        for label in ('cold', 'warm'):
            result = scale.scale_out(stack, 'local/scaleout', SCALE_REQUESTS, SCALE_MS)
            result['label'] = label
            result['ratio'] = result['drain_s'] / ideal
            rows.append(result)
            log('scale-out %s: %d/%d ok, drained in %.2f s (ideal %.2f s): %.2f'
                % (label, result['ok'], result['count'], result['drain_s'], ideal, result['ratio']))
    finally:
        stack.close()
    return {'requests': SCALE_REQUESTS, 'ms': SCALE_MS, 'max_concurrency': scale.MAX_CONCURRENCY,
            'ideal_s': ideal, 'rows': rows}


# ---------------------------------------------------------------------------
#  5. deep queue: bench/deep_queue.py's measures

def scenario_deep(build_dir):
    import deep_queue
    import hashlib
    stack = kiln_harness.Stack(name='bench-deep')
    try:
        stack.start_redis()
        stack.start_gateway()
        for app in ('bench/rate', 'bench/deep', 'bench/alone'):
            stack.deploy(kiln_harness.app_for_tests('slowlog'), app)
        count, elapsed, latencies = deep_queue.submit_rate(stack, 'bench/rate', DEEP_SUBMITS, DEEP_CLIENTS)
        log('deep queue: %d submits in %.2f s: %.0f/s' % (count, elapsed, count / elapsed))
        script = deep_queue.submit_script()
        sha = hashlib.sha1(script.encode()).hexdigest()
        with stack.redis() as r:
            same = r.command('SCRIPT', 'EXISTS', sha)[0] == 1
            r.command('SCRIPT', 'LOAD', script)
        started = time.perf_counter()
        head, tail = deep_queue.fill_queue(stack, 'bench/deep', DEEP_N, sha)
        fill_s = time.perf_counter() - started
        alone, _ = deep_queue.fill_queue(stack, 'bench/alone', 1, sha)
        log('deep queue: %d queued in %.1f s' % (DEEP_N, fill_s))
        cases = (('alone', 'bench/alone', alone), ('head', 'bench/deep', head), ('tail', 'bench/deep', tail))
        for _, app, request_id in cases:
            deep_queue.status_latency(stack, app, request_id, deep_queue.WARM_UP_SAMPLES // 3)
        latencies_by = {label: [] for label, _, _ in cases}
        positions = {}
        for _ in range(deep_queue.ROUNDS):
            for label, app, request_id in cases:
                some, positions[label] = deep_queue.status_latency(
                    stack, app, request_id, max(1, DEEP_STATUS_SAMPLES // deep_queue.ROUNDS))
                latencies_by[label].extend(some)
        status = {label: {'position': positions[label],
                          'p50_ms': statistics.median(v) * 1e3,
                          'p99_ms': deep_queue.percentile(v, 0.99) * 1e3}
                  for label, v in latencies_by.items()}
        for label in status:
            log('deep queue: status %s (position %d): median %.3f ms, p99 %.3f ms'
                % (label, status[label]['position'], status[label]['p50_ms'], status[label]['p99_ms']))
        return {'depth': DEEP_N, 'submits': count, 'submit_rate': count / elapsed,
                'submit_p50_ms': statistics.median(latencies) * 1e3,
                'submit_p99_ms': deep_queue.percentile(latencies, 0.99) * 1e3,
                'fill_s': fill_s, 'script_matches_gateway': same, 'status': status}
    finally:
        stack.close()


# ---------------------------------------------------------------------------
#  6. footprint: RSS idle and with FOOTPRINT_CALLS sync calls waiting

def open_waiting_calls(port, path, body, count, timeout_s):
    """Opens count connections to 127.0.0.1:port and sends one POST on
    each, without reading: (sockets, sent, failed connects, seconds)."""
    request = ('POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n'
               'Content-Length: %d\r\n\r\n%s' % (path, len(body), body)).encode()
    sel = selectors.DefaultSelector()
    socks, failed, sent = [], 0, 0
    started = time.monotonic()
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(('127.0.0.1', port))
        if err not in (0, 115):         # EINPROGRESS
            failed += 1
            s.close()
            continue
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE)
        #  Send as connections complete, so the listen backlog keeps moving
        for key, _ in sel.select(timeout=0):
            sent += s_send(sel, key.fileobj, request)
    deadline = time.monotonic() + timeout_s
    while len(sel.get_map()) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sent += s_send(sel, key.fileobj, request)
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
    return socks, sent, failed, time.monotonic() - started


def s_send(sel, sock, request):
    sel.unregister(sock)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
        return 0
    try:
        sock.sendall(request)
        return 1
    except OSError:
        return 0


def answered_early(socks):
    """How many of the waiting calls got an answer (or a close) already:
    none should, the app sleeps far longer."""
    count = 0
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    for key, _ in sel.select(timeout=0.2):
        count += 1
    sel.close()
    return count


def memory_of(stack, app):
    pids = {'gateway': stack.pid('gateway'), 'broker': stack.pid('broker'), 'redis': stack.pid('redis')}
    runners = stack.runner_pids(app)
    if runners:
        pids['runner'] = runners[0]
    out = {}
    for name, pid in pids.items():
        rss, hwm = proc_memory(pid)
        out[name] = {'rss_mb': rss / MIB if rss else None, 'hwm_mb': hwm / MIB if hwm else None}
    return out


def scenario_footprint(build_dir):
    limit = raise_fd_limit()
    stack = kiln_harness.Stack(name='bench-footprint')
    socks = []
    try:
        stack.start()
        app = 'bench/sleepy'
        stack.deploy(build_noop(build_dir, stack.dir, 'sleepy', 1, 1), app)
        status, _, body = stack.http('POST', '/%s/sleep' % app, '0', timeout=60)
        if status != 200:
            raise RuntimeError('the sleepy app answered %d: %r' % (status, body[:200]))
        time.sleep(1.0)
        idle = memory_of(stack, app)
        log('footprint idle: %s' % ', '.join('%s %.1f MiB' % (k, v['rss_mb'] or 0) for k, v in idle.items()))
        calls = min(FOOTPRINT_CALLS, max(100, limit - 200))
        socks, sent, failed, open_s = open_waiting_calls(
            stack.http_port, '/%s/sleep' % app, str(FOOTPRINT_SLEEP_MS), calls, FOOTPRINT_SETTLE_TIMEOUT_S)
        log('footprint: %d calls sent (%d connects failed) in %.1f s' % (sent, failed, open_s))

        def queued():
            with stack.redis() as r:
                return redis_int(r, 'ZCARD', 'kiln:queue:' + app)
        try:
            kiln_harness.wait_until(lambda: queued() >= sent - 1, FOOTPRINT_SETTLE_TIMEOUT_S,
                                    what='every call to be queued')
            all_queued = True
        except AssertionError:
            all_queued = False
        depth = queued()
        early = answered_early(socks)
        loaded = memory_of(stack, app)
        gateway_fds = len(os.listdir('/proc/%d/fd' % stack.pid('gateway')))
        log('footprint with %d waiting (%d queued, %d answered early): %s'
            % (sent, depth, early, ', '.join('%s %.1f MiB' % (k, v['rss_mb'] or 0) for k, v in loaded.items())))
        for s in socks:
            s.close()
        socks = []
        gateway_alive = stack.running('gateway')
        return {'calls': calls, 'sent': sent, 'connect_failed': failed, 'open_s': open_s,
                'queued': depth, 'all_queued': all_queued, 'answered_early': early,
                'gateway_fds': gateway_fds, 'fd_limit': limit, 'gateway_alive': gateway_alive,
                'idle': idle, 'loaded': loaded}
    finally:
        for s in socks:
            s.close()
        stack.close()


# ---------------------------------------------------------------------------
#  profile: perf on kiln's processes under load

def perf_report(data, out_path, sort, extra=(), limit='1'):
    argv = ['perf', 'report', '-i', data, '--stdio', '--no-children', '-g', 'none',
            '--sort', sort, '--percent-limit', limit] + list(extra)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    with open(out_path, 'a') as f:
        f.write('\n#### %s\n\n' % ' '.join(argv[1:]))
        f.write(result.stdout)
    rows = []
    for line in result.stdout.splitlines():
        m = re.match(r'\s+([\d.]+)%\s+(.*)$', line)
        if m:
            rows.append((float(m.group(1)), re.sub(r'\s+', ' ', m.group(2)).strip()))
    return rows


def perf_record(pids, seconds, data):
    return subprocess.Popen(['perf', 'record', '-e', 'cpu-clock', '-F', '499', '-g', '-o', data,
                             '-p', ','.join(str(p) for p in pids), '--', 'sleep', str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def syscalls_per_request(stack, env):
    """System calls per sync request, by process and by call (perf trace
    -s on each process while wrk runs c=16 on echo): {'requests': n,
    process: {'total': x, 'calls': {syscall: x}}}, all per request."""
    procs = [('gateway', stack.pid('gateway')), ('broker', stack.pid('broker')),
             ('redis-server', stack.pid('redis'))]
    procs += [('runner%d' % (i + 1), pid) for i, pid in enumerate(sorted(stack.runner_pids('local/echo')))]
    traces = []
    for name, pid in procs:
        path = os.path.join(stack.dir, 'perf-trace-%s.txt' % name)
        traces.append((name, path, subprocess.Popen(
            ['timeout', '-s', 'INT', str(PROFILE_SECONDS + 2), 'perf', 'trace', '-s', '-p', str(pid),
             '-o', path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    time.sleep(1.0)
    result = wrk(stack.url + '/local/echo', 16, PROFILE_SECONDS, os.path.join(HERE, 'wrk', 'post.lua'), env=env)
    requests = max(1, result['requests'])
    out = {'requests': result['requests']}
    for name, path, proc in traces:
        proc.wait(60)
        calls = {}
        try:
            with open(path) as f:
                for line in f:
                    m = re.match(r'\s+([a-z_0-9]+)\s+(\d+)\s+\d+\s+[\d.]+', line)
                    if m:
                        calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
        except OSError:
            pass
        out[name] = {'total': sum(calls.values()) / requests,
                     'calls': {k: v / requests for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}}
    log('profile: syscalls per sync request: %s' % ', '.join(
        '%s %.1f' % (k, v['total']) for k, v in out.items() if k != 'requests'))
    return out


def scenario_profile(build_dir):
    if not shutil.which('perf'):
        return {'error': 'perf is not installed (Debian: linux-perf)'}
    stack = kiln_harness.Stack(name='bench-profile')
    out = {}
    try:
        stack.start()
        stack.deploy(kiln_harness.example('echo'), 'local/echo')
        stack.kiln('apps', 'scale', 'local/echo', '--min', '2')
        stack.http('POST', '/local/echo', SYNC_BODY, headers={'Content-Type': 'application/json'}, timeout=60)
        noop = build_noop(build_dir, stack.dir, 'noop', ASYNC_RUNNERS, ASYNC_MULTIPLEXING)
        stack.deploy(noop, 'bench/noop')
        stack.kiln('apps', 'scale', 'bench/noop', '--min', str(ASYNC_RUNNERS))
        kiln_harness.wait_until(lambda: len(stack.runner_pids('local/echo')) == 2
                                and len(stack.runner_pids('bench/noop')) == ASYNC_RUNNERS, 30,
                                what='the runners')
        env = dict(os.environ, BENCH_BODY=SYNC_BODY)
        out['syscalls'] = syscalls_per_request(stack, env)
        for name, load in (
                ('sync', lambda: wrk(stack.url + '/local/echo', 16, PROFILE_SECONDS + 1,
                                     os.path.join(HERE, 'wrk', 'post.lua'), env=env)),
                ('async', lambda: kiln_async_round(stack, 'bench/noop', 15000))):
            pids = [stack.pid('gateway'), stack.pid('broker'), stack.pid('redis')] \
                + stack.runner_pids('local/echo' if name == 'sync' else 'bench/noop')
            data = os.path.join(stack.dir, 'perf-%s.data' % name)
            text = os.path.join(RESULTS_DIR, 'profile-%s.txt' % name)
            with open(text, 'w') as f:
                f.write('perf record -e cpu-clock -g over %d s of the %s load (wrk c=16 on echo, '
                        'or queue submits to noop); processes: gateway, broker, redis-server, runners\n'
                        % (PROFILE_SECONDS, name))
            recorder = perf_record(pids, PROFILE_SECONDS, data)
            time.sleep(0.3)
            load()
            recorder.wait(60)
            log('profile %s: perf report' % name)
            out[name] = {'by_process': perf_report(data, text, 'comm'),
                         'by_symbol': perf_report(data, text, 'comm,dso,symbol')[:25],
                         #  Redis's own code, as a share of redis-server's samples
                         'redis': perf_report(data, text, 'symbol', ['--comms', 'redis-server', '--percentage', 'relative'], '0.5')[:15],
                         'file': os.path.relpath(text, SOURCE_DIR)}
        return out
    finally:
        stack.close()


# ---------------------------------------------------------------------------
#  the report

def main():
    global kiln_harness
    build_dir = os.path.abspath(os.environ.get('KILN_BUILD_DIR') or os.path.join(SOURCE_DIR, 'build'))
    os.environ['KILN_BUILD_DIR'] = build_dir
    import kiln_harness                 # noqa: E402 - after KILN_BUILD_DIR is set
    import report
    if sys.argv[1:] == ['--report']:
        #  Writes REPORT.md and the charts again from the last run's raw.json
        with open(os.path.join(RESULTS_DIR, 'raw.json')) as f:
            print(report.write(json.load(f), RESULTS_DIR))
        return 0
    for tool in ('wrk', 'node', 'gnuplot'):
        if not shutil.which(tool):
            raise SystemExit('%s is missing: run scripts/install-bench-deps.sh' % tool)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    raise_fd_limit()
    started = time.time()
    meta = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'cores': os.cpu_count(),
            'loadavg_start': os.getloadavg(), 'quick': QUICK, 'rounds': ROUNDS,
            'build_dir': os.path.relpath(build_dir, SOURCE_DIR), 'duration_s': DURATION_S,
            'versions': report.versions()}
    results = {'meta': meta}
    functions = {'sync': scenario_sync, 'async': scenario_async, 'coldstart': scenario_coldstart,
                 'scaleout': scenario_scaleout, 'deep': scenario_deep, 'footprint': scenario_footprint,
                 'profile': scenario_profile}
    for name in SCENARIOS:
        if name not in functions:
            raise SystemExit('unknown scenario %r (BENCH_SCENARIOS: %s)' % (name, ','.join(ALL_SCENARIOS)))
        if name == 'profile' and not PROFILE:
            continue
        log('scenario %s' % name)
        t0 = time.time()
        try:
            results[name] = functions[name](build_dir)
        except Exception as e:          # noqa: BLE001 - one broken scenario must not lose the others
            log('scenario %s failed: %r' % (name, e))
            results[name] = {'error': '%s: %s' % (type(e).__name__, e)}
        results[name]['elapsed_s'] = time.time() - t0
        with open(os.path.join(RESULTS_DIR, 'raw.json'), 'w') as f:
            json.dump(results, f, indent=1, default=str)
    meta['elapsed_s'] = time.time() - started
    meta['loadavg_end'] = os.getloadavg()
    with open(os.path.join(RESULTS_DIR, 'raw.json'), 'w') as f:
        json.dump(results, f, indent=1, default=str)
    table = report.write(results, RESULTS_DIR)
    print(table)
    failed = [n for n in results if isinstance(results[n], dict) and 'error' in results[n]]
    if failed:
        log('scenarios that failed: %s (see bench/results/REPORT.md)' % ', '.join(failed))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
