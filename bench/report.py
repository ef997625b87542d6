"""report — bench/results/REPORT.md and its charts from kiln_bench's results

    write(results, results_dir) -> the summary table (Markdown), also
    written, with every scenario's details and the charts, to
    results_dir/REPORT.md; charts are PNGs drawn by gnuplot.
"""

import json
import os
import re
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(HERE)

#  What each side does for one async request, read from the code (the
#  scripts in shared/kiln_scripts.c, BullMQ's Lua scripts): the report
#  prints it under the async numbers.
ASYNC_WORK = """\
What one request costs each side:

- **kiln**: an HTTP POST to the gateway (body checked as JSON, a UUID
  made), one `EVAL SUBMIT` (2 EXISTS, HSET of the 16-field record with
  the body, INCR `kiln:seq`, ZADD to the app's queue, ZRANK for the
  position, PUBLISH `kiln:wake`) and the HTTP answer; the broker's
  share of a pipelined `EVALSHA TAKE` for all free runner slots
  (per request: ZPOPMIN of the queue head, HMGET, HSET state, HINCRBY
  attempts, ZADD `kiln:inflight`), a ZeroMQ `REQUEST` to a runner
  process (msgpack), the handler on a runner thread, a `RESULT` back,
  and `EVALSHA COMPLETE`, pipelined with the next TAKE (HMGET of the
  holder and of the record, 3 HINCRBY and one histogram bucket for
  the `kiln:stats` counters, 3 ZREM, HSET of the result, 2 EXPIRE,
  PUBLISH when a caller waits). Records are kept for the retention
  (1 h).
- **BullMQ**: the producer's `addBulk` (one round trip of
  `addStandardJob` Lua calls per 1,000 jobs: INCR of the id, HMSET of
  the job hash, XADD to the events stream, LPUSH to wait); the worker's
  `moveToActive` (move to active, lock, HSET) and `moveToFinished`
  (HSET of the return value, ZADD to completed, XADD events, and the
  next job fetched in the same call). Its scripts run with EVALSHA
  (ioredis `defineCommand`). No HTTP and no dispatcher process between
  the queue and the handler: the worker talks to Redis itself. Completed
  jobs are kept (BullMQ's default).
"""

#  What was fixed and what would pay next, from the evidence (see the
#  profile section); printed with the report.
FIXES = """\
A kiln call crosses five processes where nginx answers in one: the
gateway, redis-server (the durable queue), the broker and its ZeroMQ I/O
thread, the runner, and back through Redis pub/sub. On two cores every
crossing is a wake-up, and that, not kiln's own code, is where the time
goes (the profiles above: most samples are the kernel returning from
system calls and wake-ups). kiln persists and schedules every call; a
server that answers a constant is a ceiling, not a peer: half of nginx's
rate is out of reach for this design on this machine.

Done (each measured against the build before it; bench/README.md has the
numbers):

1. **Broker: Redis work batched per event** (broker/broker.c `s_settle`,
   `s_pipeline`). It ran every TAKE, COMPLETE, LOG and app reload as a
   blocking round trip per message (about nine per echo call: wake →
   HGETALL, TAKE, TAKE, ZCARD; LOG → LOG, APP_LOG; RESULT → COMPLETE,
   TAKE, ZCARD). Now `s_dispatch` marks the app and, once the messages of
   one wake-up are handled, the broker sends the deferred COMPLETEs and
   LOGs, one TAKE for every free runner slot of each app (TAKE takes
   several) and ZCARD, pipelined: one round trip per wake-up, whatever
   it carries. A queued request no longer makes the broker re-read its
   app (deploys and scale changes publish `kiln:changed`); a request's
   log lines go to its list and the app stream in one script, usually
   with its RESULT's round trip. Broker CPU per async request fell about
   7×, Redis's about 4×.
2. **Sync answers come with their completion.** `complete()` publishes a
   result of up to 16 KiB on the gateway's channel with the answer
   itself (a RESP array), so the gateway replies without reading the
   record: one Redis round trip fewer per sync call.
3. **Runner: no inproc pipes.** Executors are plain threads woken by a
   semaphore; they wake the main loop through one eventfd; a handler's
   log lines go with its RESULT in one message unless it runs past 2 ms
   (then they stream). System calls per request in the runner: 74 → 38.
4. **Gateway: commands leave in the loop turn that issued them** (a
   flush event, not the next turn's write event): system calls per sync
   call 26 → 16, `epoll_ctl` 10 → 5.
5. Earlier: scripts by SHA-1 (EVALSHA), one histogram bucket per
   completion instead of up to 13 HINCRBY, the gateway's epoll
   changelist.

What would pay next:

1. **Cold start: a fork server for runners.** Exec of kiln-runner costs
   9–11 ms here before main() runs: it loads 29 shared libraries
   (libczmq's and libzmq's dependencies: krb5, pgm, norm, sodium,
   libstdc++, systemd, ...), about 340 page faults at ~20 µs each on
   this VM; a fork of an already loaded process takes about 2 ms. That is
   most of the gap to the 10 ms target. A zygote (the worker asks a
   pre-loaded kiln-runner to fork each runner) must keep what the worker
   relies on: the runner as its child for its exit status, its
   environment visible in /proc, its death signal.
2. **Sync with few runners is latency-bound, not CPU-bound.** With two
   runners of one slot each, a runner that answers waits for the
   broker's COMPLETE + TAKE round trip before its next REQUEST (the
   CPU per call, section 1, would allow about twice the rate). Handing a
   runner its next request before it asks (one in reserve per runner)
   would hide that round trip, at the price of a request waiting behind
   a long one, and of a request marked running before it runs.
3. **Async: about 0.2 ms of CPU per request across four processes.**
   Three times BullMQ needs roughly half that on two cores. What is left
   is a submit over HTTP per request (BullMQ's producer adds 1,000 per
   call) and the runner's ~38 system calls per request, half of them
   libzmq's mailbox and fork check inside `zmq_poll`: polling the
   DEALER's `ZMQ_FD` directly, and a batch submit endpoint, would pay.
4. **Scale-out from cold** is within the target now, but what it pays
   over the warm run is the same exec, eight runners at once on two
   cores beside the load: the fork server would cut it too.

The gateway's memory is not a problem: about 5 KiB per waiting call,
under the 64 MiB target at 10,000 calls.
"""


def versions():
    def first_line(argv, stream='stdout'):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        text = (r.stdout or '') + (r.stderr or '')
        return text.strip().splitlines()[0] if text.strip() else None
    out = {'wrk': (first_line(['wrk', '-v']) or '').split(' [')[0].replace('wrk ', '') or None,
           'nginx': (first_line([shutil.which('nginx') or '/usr/sbin/nginx', '-v']) or '').replace('nginx version: ', '') or None,
           'node': first_line(['node', '--version']),
           'redis': (first_line(['redis-server', '--version']) or '').split(' sha=')[0] or None,
           'gnuplot': first_line(['gnuplot', '--version']),
           'kiln commit': first_line(['git', '-C', SOURCE_DIR, 'rev-parse', '--short', 'HEAD'])}
    try:
        with open(os.path.join(HERE, 'node', 'node_modules', 'bullmq', 'package.json')) as f:
            out['bullmq'] = json.load(f)['version']
    except (OSError, ValueError, KeyError):
        out['bullmq'] = None
    return out


def f0(v):
    return '—' if v is None else '{:,.0f}'.format(v)


def f1(v):
    return '—' if v is None else '%.1f' % v


def f2(v):
    return '—' if v is None else '%.2f' % v


def f3(v):
    return '—' if v is None else '%.3f' % v


def met(ok):
    return '—' if ok is None else ('**met**' if ok else '**not met**')


def ok_scenario(results, name):
    s = results.get(name)
    return isinstance(s, dict) and 'error' not in s


# ---------------------------------------------------------------------------
#  the summary: one row per target

def summary_rows(results):
    rows = []       # (scenario, kiln, reference, ratio, target, met)
    if ok_scenario(results, 'sync'):
        for row in results['sync']['rows']:
            c = row['concurrency']
            rows.append(('sync c=%d req/s' % c, f0(row['kiln']['rps']), f0(row['nginx']['rps']) + ' (nginx)',
                         f3(row['ratio_rps']), '≥ 0.5 × nginx', met(row['ratio_rps'] >= 0.5)))
        for row in results['sync']['rows']:
            c = row['concurrency']
            rows.append(('sync c=%d p50 / p99' % c,
                         '%s / %s ms' % (f3(row['kiln']['p50_ms']), f3(row['kiln']['p99_ms'])),
                         '%s / %s ms' % (f3(row['nginx']['p50_ms']), f3(row['nginx']['p99_ms'])),
                         '+%s ms at p50' % f3(row['overhead_p50_ms']),
                         '< 0.5 ms overhead at p50' if c == 1 else '',
                         met(row['overhead_p50_ms'] < 0.5) if c == 1 else ''))
    elif 'sync' in results:
        rows.append(('sync', 'failed', '', '', '', results['sync']['error']))
    if ok_scenario(results, 'async'):
        a = results['async']
        rows.append(('async completed/s (%s requests)' % f0(a['n']), f0(a['kiln']['rate']),
                     f0(a['bullmq']['rate']) + ' (BullMQ)', f2(a['ratio']), '≥ 3 × BullMQ',
                     met(a['ratio'] >= 3)))
        rows.append(('async submits/s', f0(a['kiln']['submit_rate']),
                     f0(a['bullmq']['submit_rate']) + ' (addBulk)',
                     f2(a['kiln']['submit_rate'] / a['bullmq']['submit_rate']), '', ''))
    elif 'async' in results:
        rows.append(('async', 'failed', '', '', '', results['async']['error']))
    if ok_scenario(results, 'coldstart'):
        c = results['coldstart']
        rows.append(('cold start − setup', '%s ms' % f1(c['cold_minus_setup_ms']),
                     'warm call %s ms' % f1(c['warm_ms']), '', '< 10 ms + setup',
                     met(c['cold_minus_setup_ms'] < 10)))
    elif 'coldstart' in results:
        rows.append(('cold start', 'failed', '', '', '', results['coldstart']['error']))
    if ok_scenario(results, 'scaleout'):
        s = results['scaleout']
        for row in s['rows']:
            rows.append(('scale-out %d × %d ms, %s' % (s['requests'], s['ms'], row['label']),
                         '%s s' % f2(row['drain_s']), 'ideal %s s' % f2(s['ideal_s']), f2(row['ratio']),
                         '≤ 1.10 × ideal', met(row['ratio'] <= 1.10)))
    elif 'scaleout' in results:
        rows.append(('scale-out', 'failed', '', '', '', results['scaleout']['error']))
    if ok_scenario(results, 'deep'):
        d = results['deep']
        tail = d['status']['tail']
        alone = d['status']['alone']
        rows.append(('status, %s queued (tail) p50 / p99' % f0(d['depth']),
                     '%s / %s ms' % (f3(tail['p50_ms']), f3(tail['p99_ms'])),
                     'alone in its queue %s ms' % f3(alone['p50_ms']), f2(tail['p50_ms'] / alone['p50_ms']),
                     '< 1 ms' + ('' if d['depth'] >= 1000000 else ' (at 1,000,000: this run has fewer)'),
                     met(tail['p50_ms'] < 1.0)))
        rows.append(('queue submits/s (HTTP, %d clients)' % 8, f0(d['submit_rate']), '', '', '', ''))
    elif 'deep' in results:
        rows.append(('deep queue', 'failed', '', '', '', results['deep']['error']))
    if ok_scenario(results, 'footprint'):
        fp = results['footprint']
        g = fp['loaded']['gateway']
        rows.append(('gateway RSS, %s calls waiting' % f0(fp['sent']),
                     '%s MiB (peak %s)' % (f1(g['rss_mb']), f1(g['hwm_mb'])),
                     'idle %s MiB' % f1(fp['idle']['gateway']['rss_mb']), '',
                     '< 64 MiB' + ('' if fp['sent'] >= 10000 else ' (at 10,000: this run has fewer)'),
                     met(g['hwm_mb'] is not None and g['hwm_mb'] < 64 and fp['all_queued'])))
    elif 'footprint' in results:
        rows.append(('footprint', 'failed', '', '', '', results['footprint']['error']))
    return rows


def table(rows):
    out = ['| measure | kiln | reference | kiln/ref | target | |', '|---|---|---|---|---|---|']
    for row in rows:
        out.append('| ' + ' | '.join(str(x) for x in row) + ' |')
    return '\n'.join(out)


# ---------------------------------------------------------------------------
#  charts

def gnuplot(script, results_dir):
    if not shutil.which('gnuplot'):
        return False
    terminals = subprocess.run(['gnuplot', '-e', 'set terminal'], capture_output=True, text=True).stderr
    terminal = 'pngcairo size 900,500 font ",10"' if 'pngcairo' in terminals else 'png size 900,500'
    r = subprocess.run(['gnuplot'], input='set terminal %s\n' % terminal + script,
                       capture_output=True, text=True, cwd=results_dir, timeout=60)
    if r.returncode != 0:
        print('gnuplot failed: ' + r.stderr[-1000:])
        return False
    return True


HISTOGRAM = """\
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left
"""


def charts(results, results_dir):
    made = []
    if ok_scenario(results, 'sync'):
        rows = results['sync']['rows']
        with open(os.path.join(results_dir, 'sync.dat'), 'w') as f:
            f.write('# concurrency kiln_rps nginx_rps kiln_p50 nginx_p50 kiln_p99 nginx_p99\n')
            for row in rows:
                f.write('c=%d %f %f %f %f %f %f\n' % (
                    row['concurrency'], row['kiln']['rps'], row['nginx']['rps'],
                    row['kiln']['p50_ms'], row['nginx']['p50_ms'], row['kiln']['p99_ms'], row['nginx']['p99_ms']))
        if gnuplot(HISTOGRAM + """\
set output 'sync_rps.png'
set title 'Sync: requests/s under the same wrk load (log scale; median of rounds)'
set ylabel 'requests/s'
set logscale y
plot 'sync.dat' using 2:xtic(1) title 'kiln (echo)', '' using 3 title 'nginx return 200'
""", results_dir):
            made.append(('sync_rps.png', 'Sync requests/s, kiln against nginx'))
        if gnuplot(HISTOGRAM + """\
set output 'sync_latency.png'
set title 'Sync: latency by concurrency (log scale; median of rounds)'
set ylabel 'ms'
set logscale y
plot 'sync.dat' using 4:xtic(1) title 'kiln p50', '' using 6 title 'kiln p99', \\
     '' using 5 title 'nginx p50', '' using 7 title 'nginx p99'
""", results_dir):
            made.append(('sync_latency.png', 'Sync latency, kiln against nginx'))
    if ok_scenario(results, 'async'):
        a = results['async']
        with open(os.path.join(results_dir, 'async.dat'), 'w') as f:
            f.write('# measure kiln bullmq\n')
            f.write('"completed/s" %f %f\n' % (a['kiln']['rate'], a['bullmq']['rate']))
            f.write('"submitted/s" %f %f\n' % (a['kiln']['submit_rate'], a['bullmq']['submit_rate']))
        if gnuplot(HISTOGRAM + """\
set output 'async.png'
set title 'Async: %s no-op requests (median of rounds)'
set ylabel 'per second'
set yrange [0:*]
plot 'async.dat' using 2:xtic(1) title 'kiln queue API', '' using 3 title 'BullMQ'
""" % '{:,}'.format(a['n']), results_dir):
            made.append(('async.png', 'Async throughput, kiln against BullMQ'))
    if ok_scenario(results, 'footprint'):
        fp = results['footprint']
        with open(os.path.join(results_dir, 'footprint.dat'), 'w') as f:
            f.write('# process idle_rss loaded_rss loaded_hwm (MiB)\n')
            for name in ('gateway', 'broker', 'runner', 'redis'):
                if name in fp['idle'] and name in fp['loaded']:
                    f.write('%s %f %f %f\n' % (name, fp['idle'][name]['rss_mb'] or 0,
                                              fp['loaded'][name]['rss_mb'] or 0,
                                              fp['loaded'][name]['hwm_mb'] or 0))
        if gnuplot(HISTOGRAM + """\
set output 'footprint.png'
set title 'Footprint: RSS idle and with %s sync calls waiting'
set ylabel 'MiB'
set yrange [0:*]
plot 'footprint.dat' using 2:xtic(1) title 'idle', '' using 3 title 'calls waiting', \\
     '' using 4 title 'peak (VmHWM)'
""" % '{:,}'.format(fp['sent']), results_dir):
            made.append(('footprint.png', 'Memory of kiln\'s processes'))
    return made


# ---------------------------------------------------------------------------
#  the details of each scenario

def section_sync(s):
    out = ['## 1. Sync: echo through kiln against nginx `return 200`', '',
           'Same wrk load on both: POST of the same %d-byte JSON body (wrk/post.lua), '
           'nginx answering the same body echo answers (%d bytes). Median of the rounds; '
           'the req/s of each round in brackets.' % (s.get('request_bytes', 0), s['body_bytes']), '',
           '| concurrency | kiln req/s | nginx req/s | kiln/nginx | kiln p50 | nginx p50 | kiln p99 | nginx p99 '
           '| overhead at p50 | kiln non-2xx / errors |',
           '|---|---|---|---|---|---|---|---|---|---|']
    for row in s['rows']:
        k, n = row['kiln'], row['nginx']
        out.append('| %d | %s %s | %s %s | %s | %s ms | %s ms | %s ms | %s ms | %s ms | %d / %d |' % (
            row['concurrency'], f0(k['rps']), k['rounds_rps'], f0(n['rps']), n['rounds_rps'],
            f3(row['ratio_rps']), f3(k['p50_ms']), f3(n['p50_ms']), f3(k['p99_ms']), f3(n['p99_ms']),
            f3(row['overhead_p50_ms']), k['non2xx'], k['errors']))
    out += ['', 'CPU time per sync request, by kiln process (ms; /proc/PID/stat over each kiln run):', '',
            '| concurrency | gateway | broker | runners | redis-server | total |', '|---|---|---|---|---|---|']
    for row in s['rows']:
        c = row['cpu_ms_per_request']
        total = sum(v for v in c.values() if v is not None)
        out.append('| %d | %s | %s | %s | %s | %s |' % (row['concurrency'], f3(c.get('gateway')), f3(c.get('broker')),
                                                       f3(c.get('runners')), f3(c.get('redis')), f3(total)))
    out += ['', 'The echo app has max_concurrency 2 (two runners, kept up with `kiln apps scale --min 2`) '
            'and handles one request at a time each; it parses the JSON body and logs a line per call. '
            'nginx runs `worker_processes auto`.', '']
    return out


def section_async(a):
    k, b = a['kiln'], a['bullmq']
    out = ['## 2. Async: %s no-op requests, kiln\'s queue API against BullMQ' % f0(a['n']), '',
           'kiln: wrk (wrk/submit.lua, 2 threads, 64 connections) POSTs to `/queue/bench/noop`; the noop app '
           '(bench/apps/noop.c) runs on 2 runners × max_multiplexing 8 = %d at once; done when '
           '`kiln:stats:{app}` counts every queued request completed. BullMQ: a Node.js producer '
           '(`addBulk`, 1,000 per call) and a Worker of concurrency %d in another process, on their own '
           'redis-server (same binary). Time from the first submit to the last completion; median of '
           'the rounds.' % (a['concurrency'], a['concurrency']), '',
           '| | completed/s | submitted/s | seconds | completed OK | per round (completed/s) |',
           '|---|---|---|---|---|---|',
           '| kiln | %s | %s | %s | %s/%s | %s |' % (f0(k['rate']), f0(k['submit_rate']), f2(k['seconds']),
                                                    f0(k['ok']), f0(k['n']),
                                                    [round(x['rate']) for x in a['runs']['kiln']]),
           '| BullMQ | %s | %s | %s | %s/%s | %s |' % (f0(b['rate']), f0(b['submit_rate']), f2(b['seconds']),
                                                      f0(b['ok']), f0(b['n']),
                                                      [round(x['rate']) for x in a['runs']['bullmq']]),
           '| kiln / BullMQ | %s | %s | | | |' % (f2(a['ratio']), f2(k['submit_rate'] / b['submit_rate'])),
           '']
    c = k['cpu_ms_per_request']
    total = sum(v for v in c.values() if v is not None)
    out += ['CPU time per async request (ms): kiln gateway %s, broker %s, runners %s, redis-server %s: '
            '%s in all, i.e. about %.0f%% of one core at the measured rate (the machine has two); '
            'BullMQ\'s redis-server %s.' % (
                f3(c.get('gateway')), f3(c.get('broker')), f3(c.get('runners')), f3(c.get('redis')),
                f3(total), total * k['rate'] / 10.0, f3(b['redis_cpu_ms_per_request'])),
            '', 'kiln\'s Redis used %s MiB at the end (records kept for the retention).' % f0(a['kiln_redis_used_mb']),
            '', ASYNC_WORK]
    return out


def section_coldstart(c):
    out = ['## 3. Cold start (bench/scale.py: `coldstart` app, setup() sleeps 500 ms)', '',
           '| sample | first call | its setup() | first call − setup | warm call | cold − setup − warm |',
           '|---|---|---|---|---|---|']
    for i, s in enumerate(c['samples']):
        out.append('| %d | %s ms | %s ms | %s ms | %s ms | %s ms |' % (
            i + 1, f0(s['cold_ms']), f0(s['setup_ms']), f1(s['cold_ms'] - s['setup_ms']), f1(s['warm_ms']),
            f1(s['added_ms'])))
    out += ['| median | | | %s ms | %s ms | %s ms |' % (f1(c['cold_minus_setup_ms']), f1(c['warm_ms']),
                                                      f1(c['added_ms'])), '']
    return out


def section_scaleout(s):
    out = ['## 4. Scale-out (bench/scale.py: %d requests of %d ms, max_concurrency %d; ideal %s s)'
           % (s['requests'], s['ms'], s['max_concurrency'], f2(s['ideal_s'])), '',
           '| runners at start | ok | submit all | first start | drained in | ratio to ideal | queue wait p50 / max '
           '| most runners |', '|---|---|---|---|---|---|---|---|']
    for r in s['rows']:
        out.append('| %s | %d/%d | %s s | %s s | %s s | %s | %s / %s s | %d |' % (
            'none (cold)' if r['label'] == 'cold' else '%d (warm)' % s['max_concurrency'],
            r['ok'], r['count'], f2(r['submitted_s']), f2(r['first_start_s']), f2(r['drain_s']), f2(r['ratio']),
            f2(r['wait_p50_s']), f2(r['wait_max_s']), r['max_runners']))
    out.append('')
    return out


def section_deep(d):
    out = ['## 5. Deep queue (bench/deep_queue.py: gateway and redis-server only, nothing runs)', '',
           'Submit rate: %s queue submits over HTTP from 8 client processes: %s/s, each %s ms median, %s ms p99.'
           % (f0(d['submits']), f0(d['submit_rate']), f3(d['submit_p50_ms']), f3(d['submit_p99_ms'])), '',
           'Status latency with %s requests queued (filled in %s s by pipelining the real SUBMIT script%s):'
           % (f0(d['depth']), f1(d['fill_s']),
              '' if d['script_matches_gateway'] else '; warning: the gateway runs another SUBMIT text'), '',
           '| request | queue position | status p50 | status p99 |', '|---|---|---|---|']
    for label in ('alone', 'head', 'tail'):
        s = d['status'][label]
        out.append('| %s | %s | %s ms | %s ms |' % (
            {'alone': 'alone in its queue', 'head': 'head of the deep queue',
             'tail': 'tail of the deep queue'}[label], f0(s['position']), f3(s['p50_ms']), f3(s['p99_ms'])))
    out.append('')
    return out


def per_call_kib(fp, name):
    try:
        return (fp['loaded'][name]['rss_mb'] - fp['idle'][name]['rss_mb']) * 1024 / fp['sent']
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def section_footprint(fp):
    out = ['## 6. Footprint: %s sync calls waiting at once' % f0(fp['calls']), '',
           'The `sleepy` noop variant (1 runner, one request at a time) holds each call %d s; %s connections '
           'each POST one call and wait (file descriptor limit %s). %s sent, %s connects failed, '
           'in %s s; %s queued in Redis when sampled (all queued: %s); %s answered early (should be 0); '
           'the gateway held %s file descriptors; gateway still running: %s.' % (
               90, f0(fp['calls']), f0(fp['fd_limit']), f0(fp['sent']), f0(fp['connect_failed']),
               f1(fp['open_s']), f0(fp['queued']), fp['all_queued'], f0(fp['answered_early']),
               f0(fp['gateway_fds']), fp['gateway_alive']), '',
           '| process | idle RSS | RSS with calls waiting | peak (VmHWM) |', '|---|---|---|---|']
    for name in ('gateway', 'broker', 'runner', 'redis'):
        if name in fp['idle']:
            i, l = fp['idle'][name], fp['loaded'].get(name, {})
            out.append('| %s | %s MiB | %s MiB | %s MiB |' % (
                name if name != 'redis' else 'redis-server', f1(i['rss_mb']), f1(l.get('rss_mb')),
                f1(l.get('hwm_mb'))))
    out += ['', 'The gateway grows by about %s KiB per waiting call (RSS with the calls waiting, less idle, '
            'over the calls).' % f1(per_call_kib(fp, 'gateway')), '']
    return out


def section_profile(p):
    out = ['## Where the time goes (perf, cpu-clock, kiln\'s processes under load)', '']
    for name in ('sync', 'async'):
        if name not in p:
            continue
        prof = p[name]
        out.append('**%s load** (%s; full text in `%s`). Share of samples by process: %s.' % (
            name, 'wrk c=16 on echo' if name == 'sync' else 'queue submits and their completion, noop app',
            os.path.basename(prof['file']),
            ', '.join('%s %.0f%%' % (n, pct) for pct, n in prof['by_process'])))
        out += ['', '| share | process, object, symbol |', '|---|---|']
        for pct, what in prof['by_symbol'][:15]:
            what = re.sub(r'\s+-\s+-\s*$', '', what)
            out.append('| %.1f%% | `%s` |' % (pct, what))
        out.append('')
        if prof.get('redis'):
            out += ['redis-server alone (share of its own samples): ' + ', '.join(
                '`%s` %.1f%%' % (re.sub(r'\s+-\s+-\s*$', '', what).replace('[k] ', '').replace('[.] ', ''), pct)
                for pct, what in prof['redis'][:10]) + '.', '']
    sc = p.get('syscalls')
    if sc:
        names = [n for n in sc if n != 'requests']
        out += ['System calls per sync request (`perf trace -s` on each process over %s requests, wrk c=16 '
                'on echo; a runner serves about half of them), and the most frequent ones:' % f0(sc['requests']),
                '', '| process | system calls per request | the most frequent |', '|---|---|---|']
        for n in names:
            top = list(sc[n]['calls'].items())[:5]
            out.append('| %s | %s | %s |' % (n, f1(sc[n]['total']),
                                             ', '.join('%s %s' % (k, f1(v)) for k, v in top)))
        out += ['| all | %s | |' % f1(sum(sc[n]['total'] for n in names)), '',
                'For scale: nginx answers a keep-alive request with 2–3 system calls (read, write, '
                'epoll_wait).', '']
    out += ['`pvm_irq_enable` is the VM\'s kernel returning from system calls and wake-ups: most of every '
            'process\'s time is spent in the kernel moving small messages between five processes '
            '(HTTP, Redis protocol, ZeroMQ), not in kiln\'s own code.', '']
    return out


def write(results, results_dir):
    meta = results['meta']
    rows = summary_rows(results)
    summary = table(rows)
    made = charts(results, results_dir)
    lines = ['# kiln benchmarks', '',
             '%s; %d CPU cores; load average %s at the start, %s at the end; %s%d round(s); build `%s`; '
             '%s s in all.' % (meta['date'], meta['cores'],
                               ' '.join('%.1f' % x for x in meta['loadavg_start']),
                               ' '.join('%.1f' % x for x in meta.get('loadavg_end', meta['loadavg_start'])),
                               'QUICK mode (small N: a smoke run, not a measurement); ' if meta['quick'] else '',
                               meta['rounds'], meta['build_dir'], f0(meta.get('elapsed_s'))),
             '', 'Versions: ' + ', '.join('%s %s' % (k, v) for k, v in meta['versions'].items() if v) + '.', '',
             'Everything on loopback on this one machine: the load generator, kiln\'s processes and the '
             'reference share the same cores, so ratios measured in the same run are what to read, not '
             'absolute numbers. Targets are from issue 8; they are reported, not asserted.', '',
             '## Summary', '', summary, '']
    for png, title in made:
        lines += ['![%s](%s)' % (title, png), '']
    sections = (('sync', section_sync), ('async', section_async), ('coldstart', section_coldstart),
                ('scaleout', section_scaleout), ('deep', section_deep), ('footprint', section_footprint),
                ('profile', section_profile))
    for name, fn in sections:
        if name in results:
            if 'error' in results[name]:
                lines += ['## %s: failed' % name, '', '    ' + results[name]['error'], '']
            else:
                try:
                    lines += fn(results[name])
                except (KeyError, TypeError, ZeroDivisionError) as e:
                    lines += ['## %s: could not be reported (%r)' % (name, e), '']
    lines += ['## What would make kiln faster', '', FIXES]
    with open(os.path.join(results_dir, 'REPORT.md'), 'w') as f:
        f.write('\n'.join(lines))
    return '%s\n\n%s\n\nFull report: bench/results/REPORT.md' % (
        'kiln bench, %s%s' % (meta['date'], ' (QUICK mode)' if meta['quick'] else ''), summary)
