#!/usr/bin/env python3
"""kiln's chaos suite: the reliability contract under faults (issue 6).

Starts a whole stack (redis-server with the append-only file, as `kiln up`
runs it; a broker, a gateway, a worker), deploys two apps (echo, and sleep,
whose requests hold a runner for a while), and for --seconds runs a seeded
load of sync calls and queued calls (some with a webhook to a receiver of
ours) while a killer thread, at moments drawn from the seed, SIGKILLs (now
and then SIGTERMs) and restarts: runners, the worker, the broker, the
gateway, redis-server. One fault at a time, each repaired before the next.

Then it waits until everything settles and checks every accepted request:

  accepted   a queue submit answered with a request id; a sync call
             answered with the endpoint's answer (a sync call cut off by a
             gateway kill, or refused with the gateway's own 503 before
             its submit ran, is not accepted; one answered 503 after its
             submit ran, by a gateway that stopped or lost Redis, is, and
             its result must show in Redis)
  completed  its record is COMPLETED (success, or an error a client can
             read) within --settle seconds after the chaos stops
  lost       accepted and not completed in time, or with no record at all
  duplicated a result recorded more than once: kiln:stats:{app} (one count
             per COMPLETE of the record) above the number of completed
             records of the app, or two webhook deliveries for one request
             that disagree
  failed-with-error  completed with an error_type, by type (retry limits
             are part of the contract: a request whose runner is killed 3
             times ends runner_disconnected, by design)

Also reported, and failing the run: a result that is not the answer to its
own request (a cross-wired body), a process that died without being
killed, a sanitizer report in a log. Reported only: webhook redeliveries
with the same body (at least once: a broker killed between the receiver's
2xx and recording it), sync calls cut off, calls refused.

The last line is exactly:

  accepted N, completed N, lost 0, duplicated 0, failed-with-error K (by type: runner_disconnected=…)

Exit 0 only when lost == 0 and duplicated == 0 (and nothing else above
failed); 1 otherwise; 2 when the stack itself could not run.

    python3 tests/chaos/chaos.py --seed 7 --seconds 60
    make chaos CHAOS_SECONDS=600 CHAOS_SEED=7

Environment: KILN_BUILD_DIR (default build/), as for the other tests;
KILN_TEST_KEEP=1 keeps the stack's dir (logs) afterwards. Standard library
only.
"""

import argparse
import collections
import json
import os
import random
import signal
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kiln_harness  # noqa: E402
from kiln_harness import WebhookReceiver, example, wait_until  # noqa: E402

APPS = ('local/echo', 'local/sleep')
#  What a sleep request asks for, in ms.
SLEEP_MS_MIN = 20
SLEEP_MS_MAX = 700
#  Longest a sync call may wait for its answer before it counts as hung.
SYNC_TIMEOUT_S = 90
#  Pause between two calls of one client, in s.
CLIENT_PAUSE_MIN_S = 0.02
CLIENT_PAUSE_MAX_S = 0.25
#  More pause after a call the gateway refused or could not take.
REFUSED_PAUSE_S = 0.3
#  The faults: (target, weight). One at a time.
#  'host': the worker and all its runners at once, as when a machine dies.
FAULTS = (('runner', 30), ('worker', 10), ('host', 5), ('broker', 20), ('gateway', 15),
          ('redis', 20))
#  How long a killed process stays down, in s (min, max).
DOWNTIME_S = {'worker': (0.2, 1.5), 'host': (0.5, 3.0), 'broker': (0.2, 2.0), 'gateway': (0.1, 1.0),
              'redis': (0.5, 2.5)}
#  Errors the gateway answers itself, before or instead of a result.
GATEWAY_OWN_503 = ('Redis is unavailable', 'The gateway is shutting down',
                   'Redis restarted without request')
#  Requests failed with an error listed in the report, at most.
FAILED_SHOWN = 20
#  Lines of a log shown per lost request.
LOG_LINES_PER_ID = 12


def log(text):
    sys.stdout.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), text))
    sys.stdout.flush()


class Ledger:
    """What the clients did: every call, its outcome, thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []             # dicts, see Client

    def add(self, call):
        with self.lock:
            self.calls.append(call)

    def snapshot(self):
        with self.lock:
            return list(self.calls)


class Client(threading.Thread):
    """Sends calls until told to stop: sync or queued, echo or sleep, some
    queued ones with a webhook. Its choices come from its own seeded
    random generator."""

    def __init__(self, number, seed, stack, hook, ledger, stop):
        super().__init__(name='client-%d' % number, daemon=True)
        self.rng = random.Random('%s-client-%d' % (seed, number))
        self.stack = stack
        self.hook = hook
        self.ledger = ledger
        self.stop = stop

    def run(self):
        while not self.stop.is_set():
            answered = self.one_call()
            pause = self.rng.uniform(CLIENT_PAUSE_MIN_S, CLIENT_PAUSE_MAX_S)
            #  A gateway down refuses at once: no need to count every refusal
            self.stop.wait(pause if answered else pause + REFUSED_PAUSE_S)

    def one_call(self):
        rng = self.rng
        app = rng.choice(APPS)
        kind = rng.choice(('sync', 'queue', 'queue', 'webhook'))
        tag = uuid.uuid4().hex
        payload = {'tag': tag}
        if app == 'local/sleep':
            payload['ms'] = rng.randint(SLEEP_MS_MIN, SLEEP_MS_MAX)
        call = {'app': app, 'kind': kind, 'tag': tag, 'payload': payload,
                'sent': time.monotonic(), 'id': None, 'status': None, 'body': None,
                'error': None, 'accepted': False}
        try:
            if kind == 'sync':
                status, headers, body = self.stack.http('POST', '/' + app, payload,
                                                        timeout=SYNC_TIMEOUT_S)
                call['id'] = headers.get('x-fal-request-id')
            else:
                query = '?fal_webhook=' + self.hook.url('/hook') if kind == 'webhook' else ''
                status, headers, body = self.stack.http('POST', '/queue/' + app + query,
                                                        payload, timeout=30)
                if status == 200:
                    call['id'] = json.loads(body)['request_id']
                    call['accepted'] = True
            call['status'] = status
            call['body'] = body
        except Exception as e:      # noqa: BLE001 - a killed gateway cuts calls off
            call['error'] = '%s: %s' % (type(e).__name__, e)
        call['answered'] = time.monotonic()
        self.ledger.add(call)
        return call['status'] is not None and not gateway_own_503(call)


class Killer(threading.Thread):
    """Kills and restarts parts of the stack at moments drawn from the
    seed, one fault at a time, until told to stop; every fault is repaired
    before it returns."""

    def __init__(self, seed, stack, stop, mean_interval_s, sigterm_share):
        super().__init__(name='killer', daemon=True)
        self.rng = random.Random('%s-killer' % seed)
        self.stack = stack
        self.stop = stop
        self.mean_interval_s = mean_interval_s
        self.sigterm_share = sigterm_share
        self.actions = []           # (monotonic, text)
        self.faults = 0
        self.by_kind = collections.Counter()
        self.failure = None         # a process that would not come back
        self.unexpected = []        # processes that died on their own
        #  The processes it restarts die with the thread that started them
        #  (PR_SET_PDEATHSIG is per thread): it stays until released
        self.finished = threading.Event()
        self.release = threading.Event()

    def note(self, text):
        self.actions.append((time.monotonic(), text))
        log('chaos: ' + text)
        for name in ('broker', 'gateway', 'worker'):
            try:
                self.stack.log_mark(name, 'chaos: ' + text)
            except OSError:
                pass

    def check_alive(self):
        for name in ('redis', 'broker', 'gateway', 'worker'):
            proc = self.stack.procs.get(name)
            if proc is not None and proc.poll() is not None:
                self.unexpected.append('%s exited with status %s without being killed'
                                       % (name, proc.returncode))
                self.note('%s died on its own (status %s); starting it again'
                          % (name, proc.returncode))
                self.stack.procs.pop(name)
                self.stack.restart(name)

    def run(self):
        try:
            while not self.stop.wait(self.rng.uniform(0.3, 2 * self.mean_interval_s)):
                self.check_alive()
                self.fault()
            self.check_alive()
        except Exception as e:      # noqa: BLE001 - reported by main
            self.failure = '%s: %s' % (type(e).__name__, e)
            log('chaos: the killer failed: ' + self.failure)
        self.finished.set()
        self.release.wait()

    def fault(self):
        rng = self.rng
        targets = [t for t, _ in FAULTS]
        target = rng.choices(targets, weights=[w for _, w in FAULTS])[0]
        sigterm = rng.random() < self.sigterm_share
        down_s = rng.uniform(*DOWNTIME_S.get(target, (0, 0)))
        pick = rng.random()
        self.faults += 1
        self.by_kind['SIGTERM ' + target if sigterm and target not in ('runner', 'redis', 'host')
                     else 'SIGKILL ' + target] += 1
        if target == 'runner':
            pids = sorted(self.stack.all_runner_pids())
            if not pids:
                self.note('no runner to kill')
                return
            pid = pids[int(pick * len(pids))]
            self.note('SIGKILL runner pid %d (%s)' % (
                pid, kiln_harness.proc_environ(pid).get('KILN_APP', '?')))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        if target == 'host':
            self.note('SIGKILL the worker and its runners, down %.1f s' % down_s)
            proc = self.stack.procs.pop('worker', None)
            if proc is not None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            target = 'worker'
        elif sigterm and target != 'redis':
            self.note('SIGTERM %s (drain), down %.1f s' % (target, down_s))
            status = self.stack.stop(target, signal.SIGTERM)
            if status != 0:
                self.unexpected.append('%s exited with status %s on SIGTERM' % (target, status))
                self.note('%s exited with status %s on SIGTERM' % (target, status))
        else:
            self.note('SIGKILL %s, down %.1f s' % (target, down_s))
            self.stack.kill(target)
        time.sleep(down_s)
        self.stack.restart(target)
        self.note('%s is back' % target)


def grep_logs(stack, text, limit=LOG_LINES_PER_ID):
    """Lines of the stack's logs that mention text, oldest first."""
    found = []
    for name in ('broker', 'worker', 'gateway'):
        try:
            with open(stack.log_path(name), 'rb') as f:
                for line in f.read().decode('utf-8', 'replace').splitlines():
                    if text in line:
                        found.append('%s: %s' % (name, line))
        except OSError:
            pass
    return found[-limit:]


def read_records(stack, ids):
    """{id: record fields} for ids ({} for an id with no record)."""
    fields = ('state', 'status', 'error_type', 'error', 'attempts', 'runner',
              'webhook_state', 'webhook_attempts', 'app', 'result_body')
    records = {}
    ids = list(ids)
    with stack.redis() as r:
        for start in range(0, len(ids), 200):
            chunk = ids[start:start + 200]
            replies = r.pipeline([('HMGET', 'kiln:req:' + i) + fields for i in chunk])
            for request_id, values in zip(chunk, replies):
                if isinstance(values, Exception):
                    raise values
                record = {k: v.decode('utf-8', 'replace') for k, v in zip(fields, values)
                          if v is not None}
                records[request_id] = record
    return records


def wait_redis(stack, timeout):
    def pong():
        with stack.redis() as r:
            return r.command('PING') == 'PONG'
    wait_until(pong, timeout, what='Redis to answer')


def gateway_own_503(call):
    if call['status'] != 503:
        return False
    try:
        detail = json.loads(call['body']).get('detail', '')
    except (ValueError, AttributeError):
        return False
    return any(detail.startswith(text) for text in GATEWAY_OWN_503)


def wrong_result(call, record):
    """Why the result is not the answer to this call's own request, or None."""
    body = call['body'] if call['kind'] == 'sync' else record.get('result_body', '')
    status = call['status'] if call['kind'] == 'sync' else record.get('status')
    if str(status) != '200':
        return None
    try:
        obj = json.loads(body)
    except (ValueError, TypeError):
        return 'the result is not JSON: %r' % (body[:200],)
    if call['app'] == 'local/echo':
        if not isinstance(obj, dict) or obj.get('input') != call['payload']:
            return 'echo answered %r to %r' % (obj, call['payload'])
    elif not isinstance(obj, dict) or obj.get('slept_ms') != call['payload']['ms']:
        return 'sleep answered %r to %r' % (obj, call['payload'])
    return None


def settle_and_check(stack, hook, calls, settle_s, actions=()):
    """Waits (up to settle_s) until every accepted request completed and
    every webhook ended, then checks them all. Returns (report lines,
    counts)."""
    lines = []
    #  Refused: the gateway was down (connection refused); cut off: it died
    #  (or closed) while the call waited
    down = [c for c in calls if c['status'] is None
            and (c['error'] or '').startswith('ConnectionRefusedError')]
    down_ids = {id(c) for c in down}
    sync_cut = [c for c in calls if c['kind'] == 'sync' and c['status'] is None
                and id(c) not in down_ids]
    refused = [c for c in calls if c['kind'] != 'sync' and not c['accepted']]
    sync_answered = [c for c in calls if c['kind'] == 'sync' and c['status'] is not None]

    #  A sync call's fate: its answer came from its record, or (a 503 of
    #  the gateway's own) its record may exist or not
    candidates = [c for c in calls if c['id']]
    deadline = time.monotonic() + settle_s
    records = {}
    while True:
        wait_redis(stack, max(1, deadline - time.monotonic()))
        records = read_records(stack, [c['id'] for c in candidates])
        pending = [c for c in candidates
                   if records[c['id']].get('state') not in (None, 'COMPLETED')
                   or (c['accepted'] and not records[c['id']])
                   or (c['kind'] == 'webhook' and records[c['id']].get('state') == 'COMPLETED'
                       and records[c['id']].get('webhook_state') not in ('delivered', 'failed'))]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.5)

    accepted = []
    sync_refused = []
    for c in candidates:
        record = records[c['id']]
        if c['kind'] == 'sync' and not record:
            if gateway_own_503(c):
                sync_refused.append(c)
                continue
        elif c['kind'] == 'sync':
            c['accepted'] = True
        accepted.append(c)
    for c in sync_answered:
        if not c['id'] and not gateway_own_503(c):
            #  An answer with no request id (a 4xx of the router?): odd
            lines.append('sync call answered %s without a request id: %r'
                         % (c['status'], (c['body'] or b'')[:200]))
        elif not c['id']:
            sync_refused.append(c)

    lost, completed, wrong = [], [], []
    errors = collections.Counter()
    for c in accepted:
        record = records[c['id']]
        if record.get('state') != 'COMPLETED':
            lost.append(c)
            continue
        completed.append(c)
        if record.get('error_type'):
            errors[record['error_type']] += 1
        why = wrong_result(c, record)
        if why:
            wrong.append((c, why))

    #  Results recorded twice: complete() counts once per COMPLETE
    duplicated = []
    with stack.redis() as r:
        completed_per_app = collections.Counter()
        all_ids = [k[len('kiln:req:'):] for k in r.scan_keys('kiln:req:*') if k.count(':') == 2]
    all_records = read_records(stack, all_ids)
    for request_id, record in all_records.items():
        if record.get('state') == 'COMPLETED':
            completed_per_app[record.get('app', '?')] += 1
    with stack.redis() as r:
        for app in APPS:
            stats = r.hgetall('kiln:stats:' + app)
            counted = sum(int(v) for k, v in stats.items() if k.startswith('status:'))
            if counted > completed_per_app[app]:
                duplicated.append('kiln:stats:%s counts %d completions of %d completed records'
                                  % (app, counted, completed_per_app[app]))
    known = {c['id'] for c in candidates}
    orphans = [i for i in all_ids if i not in known]

    #  Webhooks: one delivery per completion, all of them alike
    deliveries = collections.defaultdict(list)
    delivered_at = collections.defaultdict(list)
    for at, path, _, body in hook.received('/hook'):
        try:
            deliveries[json.loads(body)['request_id']].append(body)
            delivered_at[json.loads(body)['request_id']].append(at - START[0])
        except (ValueError, KeyError):
            lines.append('a webhook delivery that is not kiln\'s: %r' % (body[:200],))
    redelivered = []
    for c in accepted:
        if c['kind'] != 'webhook' or c in lost:
            continue
        got = deliveries.get(c['id'], [])
        if not got:
            lost.append(c)
            c['why_lost'] = 'no webhook delivery (webhook_state %s)' % (
                records[c['id']].get('webhook_state'),)
        elif len(set(got)) > 1:
            duplicated.append('request %s: %d webhook deliveries that differ'
                              % (c['id'], len(got)))
        elif len(got) > 1:
            redelivered.append((c['id'], len(got)))

    #  The details, for whoever reads a failed run
    for c in lost:
        record = records.get(c['id'], {})
        lines.append('LOST %s %s %s (sent at +%.1f s): %s; record %s' % (
            c['kind'], c['app'], c['id'], c['sent'] - START[0],
            c.get('why_lost', 'not completed'),
            {k: v for k, v in record.items() if k != 'result_body'} or 'missing'))
        lines.extend('    ' + line for line in grep_logs(stack, c['id']))
    failed = [c for c in completed if records[c['id']].get('error_type')]
    for c in failed[:FAILED_SHOWN]:
        record = records[c['id']]
        lines.append('failed-with-error %s %s %s: %s %s (%s; attempts %s)' % (
            c['kind'], c['app'], c['id'], record.get('status'), record.get('error_type'),
            record.get('error'), record.get('attempts')))
    for c, why in wrong:
        lines.append('WRONG RESULT %s %s %s: %s' % (c['kind'], c['app'], c['id'], why))
    for entry in duplicated:
        lines.append('DUPLICATED ' + entry)
    for request_id, count in redelivered:
        times = delivered_at[request_id]
        lines.append('webhook for %s delivered %d times (same body) at %s; faults from 40 s '
                     'before: %s' % (
                         request_id, count, ', '.join('+%.1f s' % t for t in times),
                         '; '.join('+%.1f s %s' % (at - START[0], text) for at, text in actions
                                   if times[0] - 40 <= at - START[0] <= times[-1]) or 'none'))
        lines.extend('    ' + line for line in grep_logs(stack, request_id))
    #  Answers that are neither a result nor the gateway's own 503: worth a look
    odd = collections.Counter()
    for c in calls:
        if c['status'] is None or c['status'] == 200 or gateway_own_503(c):
            continue
        try:
            obj = json.loads(c['body'])
            what = '%s: %s' % (obj.get('error_type'), str(obj.get('detail'))[:80])
        except (ValueError, TypeError, AttributeError):
            what = repr((c['body'] or b'')[:80])
        odd['%s answered %d (%s)' % (c['kind'], c['status'], what)] += 1
    for what, count in sorted(odd.items()):
        lines.append('%d× %s' % (count, what))
    orphan_records = read_records(stack, orphans)
    unfinished_orphans = [i for i in orphans if orphan_records[i].get('state') != 'COMPLETED']
    lines.append('%d calls found the gateway down, %d sync calls cut off, %d sync calls '
                 'refused by the gateway, %d queue submits refused or cut off; %d records '
                 'nobody was told of (%d not completed); %d webhook redeliveries' % (
                     len(down), len(sync_cut), len(sync_refused), len(refused), len(orphans),
                     len(unfinished_orphans), len(redelivered)))
    for i in unfinished_orphans:
        lines.append('record nobody was told of, not completed: %s %s' % (
            i, {k: v for k, v in orphan_records[i].items() if k != 'result_body'}))
    counts = {'accepted': len(accepted), 'completed': len(completed) - len(
        [c for c in lost if c in completed]), 'lost': len(lost),
        'duplicated': len(duplicated), 'errors': errors, 'wrong': len(wrong)}
    return lines, counts


START = [0.0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seed', type=int, default=None, help='random seed (default: random)')
    parser.add_argument('--seconds', type=float, default=60, help='how long the chaos lasts')
    parser.add_argument('--settle', type=float, default=120,
                        help='how long the requests get to complete afterwards')
    parser.add_argument('--clients', type=int, default=3, help='client threads')
    parser.add_argument('--kill-every', type=float, default=3.0,
                        help='mean seconds between two faults')
    parser.add_argument('--sigterm-share', type=float, default=0.15,
                        help='share of process faults that are a SIGTERM, not a SIGKILL')
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    log('chaos: seed %d, %.0f s of chaos, %d clients, a fault every %.1f s on average'
        % (seed, args.seconds, args.clients, args.kill_every))

    stack = kiln_harness.Stack(name='chaos', worker_args=['--slots', 'CPU=8'],
                               env={'KILN_WEBHOOK_BACKOFF_MS': '300',
                                    'KILN_WEBHOOK_TIMEOUT_MS': '3000'})
    hook = WebhookReceiver()
    problems = []
    killer = None
    try:
        try:
            stack.start_durable()
            for app in APPS:
                stack.deploy(example(app.split('/')[1]), app)
            #  Both apps answer before the chaos starts
            for app in APPS:
                status, _, obj = stack.call('/' + app, {'ms': 1, 'warm': True}, timeout=60)
                if status != 200:
                    raise AssertionError('%s answered %d: %r' % (app, status, obj))
        except Exception as e:      # noqa: BLE001
            log('chaos: the stack did not start: %s' % e)
            stack.dump_logs(sys.stdout)
            return 2
        log('chaos: stack up in %s' % stack.dir)

        ledger = Ledger()
        stop_clients = threading.Event()
        stop_killer = threading.Event()
        clients = [Client(i, seed, stack, hook, ledger, stop_clients)
                   for i in range(args.clients)]
        killer = Killer(seed, stack, stop_killer, args.kill_every, args.sigterm_share)
        START[0] = time.monotonic()
        for c in clients:
            c.start()
        killer.start()
        stop_killer.wait(args.seconds)
        stop_killer.set()
        killer.finished.wait(60)
        stop_clients.set()
        log('chaos: over after %.0f s and %d faults (%s); waiting for the clients'
            % (time.monotonic() - START[0], killer.faults,
               ', '.join('%s %d' % (k, v) for k, v in sorted(killer.by_kind.items()))))
        for c in clients:
            c.join(SYNC_TIMEOUT_S + 30)
        hung = [c.name for c in clients if c.is_alive()]
        if not killer.finished.is_set() or killer.failure:
            log('chaos: the killer could not repair the stack: %s' % (killer.failure,))
            stack.dump_logs(sys.stdout)
            return 2
        calls = ledger.snapshot()
        log('chaos: %d calls sent; settling (up to %.0f s)' % (len(calls), args.settle))
        lines, counts = settle_and_check(stack, hook, calls, args.settle, killer.actions)
        for line in lines:
            log(line)
        problems += killer.unexpected
        if hung:
            problems.append('clients still waiting on a sync call after %d s: %s'
                            % (SYNC_TIMEOUT_S, ', '.join(hung)))
        if counts['wrong']:
            problems.append('%d results that answer another request' % counts['wrong'])
    finally:
        hook.close()
        problems += stack.close()
        if killer is not None:
            killer.release.set()
            killer.join(10)
    for problem in problems:
        log('PROBLEM: ' + problem)
    errors = counts['errors']
    by_type = ', '.join('%s=%d' % (k, errors[k]) for k in sorted(errors)) or 'none'
    if counts['lost'] or counts['duplicated'] or problems:
        log('chaos: FAILED (seed %d)' % seed)
    print('accepted %d, completed %d, lost %d, duplicated %d, failed-with-error %d (by type: %s)'
          % (counts['accepted'], counts['completed'], counts['lost'], counts['duplicated'],
             sum(errors.values()), by_type))
    sys.stdout.flush()
    return 0 if not counts['lost'] and not counts['duplicated'] and not problems else 1


if __name__ == '__main__':
    sys.exit(main())
