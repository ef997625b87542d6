"""kiln_harness — what the integration tests share.

Each test module starts its own kiln stack: a redis-server, kiln-broker,
kiln-gateway and kiln-worker on free loopback ports, with all state in a
temp dir, deploys apps with the real CLI, and kills everything at the end
(tearDownClass, plus atexit and PDEATHSIG for when the test runner itself
dies). Standard library only.

    class MyTest(kiln_harness.KilnTestCase):
        @classmethod
        def setUpClass(cls):
            cls.start_stack()
            cls.stack.deploy(kiln_harness.example('echo'), 'local/echo')

        def test_echo(self):
            status, headers, body = self.stack.http('POST', '/local/echo', {'a': 1})

For the queue API: Stack.queue_submit / queue_status / wait_state /
request_ids / record / sse (an EventStream of server-sent events),
QueueTestCase (helpers bound to one app, by default the slowlog test
app), and WebhookReceiver (a real HTTP server in a thread that records
deliveries and answers a planned status to each).

Environment: KILN_BUILD_DIR (programs in bin/, example apps in examples/,
test apps in test-apps/) and KILN_SOURCE_DIR; ctest sets both.
"""

import atexit
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SOURCE_DIR = os.environ.get('KILN_SOURCE_DIR') or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
BUILD_DIR = os.environ.get('KILN_BUILD_DIR') or os.path.join(SOURCE_DIR, 'build')

UUID4_RE = re.compile(
    r'^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$')

#  How long a process gets to stop on SIGTERM before it is killed.
STOP_TIMEOUT_S = 10
#  How long a program gets to come up (port open, /health answering).
START_TIMEOUT_S = 15
#  Lines of each log printed when a test fails.
LOG_TAIL_LINES = 40
#  What AddressSanitizer and UBSan print when they catch a bug.
SANITIZER_REPORT_RE = re.compile(r'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error: ')

PR_SET_PDEATHSIG = 1


def program(name):
    """Path of a kiln program in the build; fails the test if not built."""
    path = os.path.join(BUILD_DIR, 'bin', name)
    if not os.access(path, os.X_OK):
        raise AssertionError('%s is not built (looked for %s)' % (name, path))
    return path


def example(name):
    """Path of an example app (build/examples/NAME.so)."""
    return _artifact(os.path.join(BUILD_DIR, 'examples', name + '.so'))


def app_for_tests(name):
    """Path of a test app (build/test-apps/NAME.so)."""
    return _artifact(os.path.join(BUILD_DIR, 'test-apps', name + '.so'))


def _artifact(path):
    if not os.path.isfile(path):
        raise AssertionError('app is not built: %s' % path)
    return path


def free_ports(count):
    """count distinct loopback TCP ports nobody listens on right now (all
    bound at once while choosing, so they differ)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    """A loopback TCP port nobody listens on right now."""
    return free_ports(1)[0]


def wait_until(cond, timeout=10.0, interval=0.05, what=None):
    """Polls cond() until it returns something true, and returns that.

    An exception from cond() counts as "not yet" (a port not open yet),
    except AssertionError, which gives up at once (the process being
    waited for has died). Raises AssertionError naming `what` and the
    last exception on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:      # noqa: BLE001 - any failure means "not yet"
            last_error = e
        if time.monotonic() >= deadline:
            message = 'timed out after %.1f s waiting for %s' % (
                timeout, what or getattr(cond, '__name__', 'a condition'))
            if last_error is not None:
                message += ' (last error: %r)' % (last_error,)
            raise AssertionError(message)
        time.sleep(interval)


#  Loaded here, not in the child: dlopen after fork in a threaded
#  process could deadlock on the loader's lock.
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _set_pdeathsig():
    #  Runs in the child between fork and exec: if the test process dies
    #  (even by SIGKILL, as ctest does on a timeout), so does the child.
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv, env, log_path, stdout=None):
    """Starts a program in its own session (so its process group can be
    killed with all it started), stderr (and stdout unless given) appended
    to log_path."""
    log = open(log_path, 'ab')
    log.write(('--- %s: %s\n' % (time.strftime('%H:%M:%S'), ' '.join(argv))).encode())
    log.flush()
    try:
        return subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log, stderr=log,
            start_new_session=True, preexec_fn=_set_pdeathsig)
    finally:
        log.close()


def stop_process(proc, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
    """Sends sig to the process, waits for it, then SIGKILLs its process
    group so nothing it started survives. Returns its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def tail(path, lines=LOG_TAIL_LINES):
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError:
        return ''
    text = data.decode('utf-8', 'replace').splitlines()
    return '\n'.join(text[-lines:])


def http_request(port, method, path, body=None, headers=None, timeout=30.0):
    """One HTTP request to 127.0.0.1:port: (status, headers, body bytes).
    Header names are lower-cased. A dict or list body is sent as JSON
    (Content-Type application/json unless headers say otherwise)."""
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        if not any(k.lower() == 'content-type' for k in headers):
            headers['Content-Type'] = 'application/json'
    elif isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


#  ---------------------------------------------------------------------
#  /proc: find processes by what they run and where they came from

def proc_cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().split(b'\0')
    except OSError:
        return []


def proc_environ(pid):
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            data = f.read()
    except OSError:
        return {}
    env = {}
    for item in data.split(b'\0'):
        key, sep, value = item.partition(b'=')
        if sep:
            env[key.decode('utf-8', 'replace')] = value.decode('utf-8', 'replace')
    return env


def proc_stat(pid):
    """(state, ppid, starttime) of a process, or None when it is gone."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            data = f.read().decode('utf-8', 'replace')
    except OSError:
        return None
    #  The command name may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(')') + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def all_pids():
    return [int(name) for name in os.listdir('/proc') if name.isdigit()]


def alive(pid, starttime=None):
    """True if pid runs (not a zombie) and, when given, started at starttime
    (so a recycled pid does not count)."""
    stat = proc_stat(pid)
    if stat is None or stat[0] in ('Z', 'X'):
        return False
    return starttime is None or stat[2] == starttime


def descendants(root_pid):
    """{pid: starttime} of every live process below root_pid."""
    children = {}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat:
            children.setdefault(stat[1], []).append((pid, stat[2]))
    found = {}
    todo = [root_pid]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def pids_mentioning(text):
    """Live processes whose command line mentions text (a temp dir)."""
    needle = text.encode()
    own = os.getpid()
    return [pid for pid in all_pids()
            if pid != own and alive(pid)
            and any(needle in arg for arg in proc_cmdline(pid))]


#  ---------------------------------------------------------------------
#  A minimal Redis client (RESP2), so tests can read kiln's records

class RedisError(Exception):
    pass


class Redis:
    def __init__(self, port, host='127.0.0.1', timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile('rb')

    def close(self):
        self.reader.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def command(self, *args):
        out = [b'*%d\r\n' % len(args)]
        for arg in args:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int):
                arg = str(arg).encode()
            out.append(b'$%d\r\n%s\r\n' % (len(arg), arg))
        self.sock.sendall(b''.join(out))
        return self._read()

    def _read(self):
        line = self.reader.readline()
        if not line.endswith(b'\r\n'):
            raise RedisError('connection closed')
        kind, rest = line[:1], line[1:-2]
        if kind == b'+':
            return rest.decode()
        if kind == b'-':
            raise RedisError(rest.decode())
        if kind == b':':
            return int(rest)
        if kind == b'$':
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)
            return data[:-2]
        if kind == b'*':
            count = int(rest)
            if count < 0:
                return None
            return [self._read() for _ in range(count)]
        raise RedisError('bad reply %r' % line)

    def pipeline(self, commands):
        """Sends every command at once, then reads all the replies (in
        order): one round trip for many commands. An error reply comes
        back as a RedisError in the list rather than being raised."""
        out = []
        for args in commands:
            out.append(b'*%d\r\n' % len(args))
            for arg in args:
                if isinstance(arg, str):
                    arg = arg.encode()
                elif isinstance(arg, int):
                    arg = str(arg).encode()
                out.append(b'$%d\r\n%s\r\n' % (len(arg), arg))
        self.sock.sendall(b''.join(out))
        replies = []
        for _ in commands:
            try:
                replies.append(self._read())
            except RedisError as e:
                if str(e) == 'connection closed':
                    raise
                replies.append(e)
        return replies

    def scan_keys(self, pattern):
        """Every key matching pattern, by SCAN (never blocks the server
        as KEYS would on a big database)."""
        cursor, keys = b'0', []
        while True:
            cursor, batch = self.command('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
            keys.extend(k.decode() for k in batch)
            if cursor in (b'0', 0, '0'):
                return keys

    def hgetall(self, key):
        """The hash as {field: str} (values decoded leniently)."""
        items = self.command('HGETALL', key) or []
        return {items[i].decode(): items[i + 1].decode('utf-8', 'replace')
                for i in range(0, len(items), 2)}


#  ---------------------------------------------------------------------
#  The stack

_live_stacks = []


def _cleanup_all():
    for stack in list(_live_stacks):
        stack.close()


atexit.register(_cleanup_all)


def _on_sigterm(signum, frame):
    #  Turn SIGTERM into an exit so atexit runs and the stack goes down.
    sys.exit(128 + signum)


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


class Stack:
    """A redis-server, kiln-broker, kiln-gateway and kiln-worker in a temp
    dir, each one startable and stoppable on its own (same ports on
    restart). Logs go to <dir>/<process>.log."""

    def __init__(self, name='kiln', env=None, worker_args=None):
        self.dir = tempfile.mkdtemp(prefix='kiln-test-%s-' % name)
        self.state_dir = os.path.join(self.dir, 'state')
        os.makedirs(self.state_dir)
        self.redis_port, self.broker_port, self.http_port = free_ports(3)
        self.url = 'http://127.0.0.1:%d' % self.http_port
        self.env = dict(os.environ)
        self.env.update({
            'KILN_REDIS_URL': 'redis://127.0.0.1:%d' % self.redis_port,
            'KILN_BROKER_ENDPOINT': 'tcp://127.0.0.1:%d' % self.broker_port,
            'KILN_HTTP_ADDR': '127.0.0.1:%d' % self.http_port,
            'KILN_URL': self.url,
            'KILN_PUBLIC_URL': self.url,
            'KILN_STATE_DIR': self.state_dir,
            #  Tests deliver webhooks to receivers on loopback, which the
            #  broker refuses by default (env={'KILN_WEBHOOK_ALLOW_PRIVATE':
            #  '0'} tests the refusal).
            'KILN_WEBHOOK_ALLOW_PRIVATE': '1',
        })
        self.env.pop('KILN_KEY', None)
        self.env.update(env or {})
        #  Enough CPU slots that every app of a test module gets runners
        #  (the worker's default is max(4, cores)).
        self.worker_args = worker_args if worker_args is not None else ['--slots', 'CPU=16']
        self.procs = {}
        self.started_at = {}
        self.closed = False
        _live_stacks.append(self)

    # -- processes -------------------------------------------------------

    def log_path(self, name):
        return os.path.join(self.dir, name + '.log')

    def start(self):
        """Starts all four; fails (with the logs) if one does not come up."""
        self.start_redis()
        self.start_broker()
        self.start_gateway()
        self.start_worker()
        return self

    def start_redis(self):
        self.procs['redis'] = spawn(
            ['redis-server', '--port', str(self.redis_port), '--bind', '127.0.0.1',
             '--save', '', '--appendonly', 'no', '--dir', self.dir],
            self.env, self.log_path('redis'))
        self.started_at['redis'] = time.monotonic()

        def pong():
            self._check_running('redis')
            with Redis(self.redis_port) as r:
                return r.command('PING') == 'PONG'
        wait_until(pong, START_TIMEOUT_S, what='redis-server to answer PING')

    def start_broker(self, extra_args=()):
        self.procs['broker'] = spawn(
            [program('kiln-broker')] + list(extra_args), self.env, self.log_path('broker'))
        self.started_at['broker'] = time.monotonic()

        def listening():
            self._check_running('broker')
            with socket.create_connection(('127.0.0.1', self.broker_port), timeout=1):
                return True
        wait_until(listening, START_TIMEOUT_S, what='kiln-broker to listen')

    def start_gateway(self, extra_args=()):
        self.procs['gateway'] = spawn(
            [program('kiln-gateway')] + list(extra_args), self.env, self.log_path('gateway'))
        self.started_at['gateway'] = time.monotonic()

        def healthy():
            self._check_running('gateway')
            return self.http('GET', '/health', timeout=2)[0] == 200
        wait_until(healthy, START_TIMEOUT_S, what='kiln-gateway GET /health = 200')

    def start_worker(self, extra_args=()):
        self.procs['worker'] = spawn(
            [program('kiln-worker')] + self.worker_args + list(extra_args),
            self.env, self.log_path('worker'))
        self.started_at['worker'] = time.monotonic()
        self._check_running('worker')

    def _check_running(self, name):
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            raise AssertionError('%s exited with status %s; log:\n%s' % (
                name, proc.returncode if proc else None, tail(self.log_path(name))))
        return True

    def running(self, name):
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name):
        return self.procs[name].pid

    def stop(self, name, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        """Stops one process (sig, then SIGKILL of its group after
        timeout) and returns its exit status."""
        return stop_process(self.procs.pop(name, None), sig, timeout)

    def uptime(self, name):
        return time.monotonic() - self.started_at[name]

    def close(self):
        """Stops everything (worker first, so runners go with it), kills
        any straggler that mentions the temp dir, removes the temp dir.
        Returns what went wrong on the way: a list of problems (a process
        that did not exit 0 on SIGTERM, a sanitizer report in a log)."""
        if self.closed:
            return []
        self.closed = True
        problems = []
        for name in ('worker', 'gateway', 'broker', 'redis'):
            status = self.stop(name)
            if status not in (None, 0):
                problems.append('%s exited with status %d on SIGTERM' % (name, status))
        for pid in pids_mentioning(self.dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        problems += self.sanitizer_reports()
        if problems:
            self.dump_logs()
        if os.environ.get('KILN_TEST_KEEP'):
            sys.stderr.write('kiln test dir kept: %s\n' % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self in _live_stacks:
            _live_stacks.remove(self)
        return problems

    def sanitizer_reports(self):
        """One line per log in which ASan or UBSan reported a bug."""
        found = []
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith('.log'):
                continue
            with open(os.path.join(self.dir, name), 'rb') as f:
                text = f.read().decode('utf-8', 'replace')
            match = SANITIZER_REPORT_RE.search(text)
            if match:
                line = text[text.rfind('\n', 0, match.start()) + 1:].split('\n', 1)[0]
                found.append('sanitizer report in %s: %s' % (name, line))
        return found

    def dump_logs(self, stream=None):
        stream = stream or sys.stderr
        for name in sorted(os.listdir(self.dir)) if os.path.isdir(self.dir) else []:
            if name.endswith('.log'):
                stream.write('\n===== %s (last %d lines) =====\n%s\n' % (
                    name, LOG_TAIL_LINES, tail(os.path.join(self.dir, name))))
        stream.flush()

    # -- faults: what the chaos suite and the restart tests do -----------

    def start_redis_durable(self):
        """Starts redis-server as `kiln up` runs it: the append-only file
        on, fsync'd every second, in this stack's dir; on the same port
        and dir again after a kill it reloads what was written. Waits
        until it answers PING (and has loaded its data)."""
        self.procs['redis'] = spawn(
            ['redis-server', '--port', str(self.redis_port), '--bind', '127.0.0.1',
             '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec',
             '--dir', self.dir],
            self.env, self.log_path('redis'))
        self.started_at['redis'] = time.monotonic()

        def pong():
            self._check_running('redis')
            with Redis(self.redis_port) as r:
                return r.command('PING') == 'PONG'
        wait_until(pong, START_TIMEOUT_S, what='redis-server to answer PING')

    def start_durable(self):
        """start(), with the durable Redis of start_redis_durable."""
        self.start_redis_durable()
        self.start_broker()
        self.start_gateway()
        self.start_worker()
        return self

    def kill(self, name):
        """SIGKILLs one process of the stack (that process only: what it
        started lives on, as it would after a crash) and reaps it.
        Returns its pid, or None when it was not running."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        proc.wait()
        return proc.pid

    def restart(self, name, durable_redis=True):
        """Starts a process of the stack again (after kill or stop), on
        the same ports and dir; Redis with the append-only file unless
        durable_redis is false. The worker keeps its arguments.

        Call it from a thread that outlives the process: what spawn
        starts gets SIGKILL when the thread that started it ends
        (PR_SET_PDEATHSIG belongs to the thread)."""
        if self.running(name):
            raise AssertionError('%s is still running' % name)
        self.procs.pop(name, None)
        if name == 'redis':
            if durable_redis:
                self.start_redis_durable()
            else:
                self.start_redis()
        else:
            getattr(self, 'start_' + name)()

    def log_mark(self, name, text):
        """Writes a line into a process's log (what a test did, and when),
        so the logs read in order when a test fails."""
        with open(self.log_path(name), 'ab') as log:
            log.write(('--- %s: %s\n' % (time.strftime('%H:%M:%S'), text)).encode())

    def all_runner_pids(self):
        """Live runner processes of this stack, whatever their app."""
        endpoint = self.env['KILN_BROKER_ENDPOINT']
        found = []
        for pid in all_pids():
            if not alive(pid):
                continue
            env = proc_environ(pid)
            if env.get('KILN_BROKER_ENDPOINT') == endpoint and env.get('KILN_RUNNER_ID'):
                found.append(pid)
        return found

    # -- clients ---------------------------------------------------------

    def http(self, method, path, body=None, headers=None, timeout=30.0):
        """One HTTP request to this stack's gateway; see http_request."""
        return http_request(self.http_port, method, path, body, headers, timeout)

    def call(self, path, payload, timeout=30.0, headers=None):
        """POSTs JSON and decodes a JSON answer: (status, headers, obj).
        Fails if the answer is not JSON."""
        status, hdrs, data = self.http('POST', path, payload, headers=headers, timeout=timeout)
        try:
            obj = json.loads(data)
        except ValueError:
            raise AssertionError('%s answered %d with a body that is not JSON: %r'
                                 % (path, status, data[:300]))
        return status, hdrs, obj

    def redis(self):
        return Redis(self.redis_port)

    def kiln(self, *args, timeout=60):
        """Runs the CLI against this stack: CompletedProcess (text). A
        sanitizer report on its stderr fails the test whatever its exit
        status (a leak exits 1, which may be the status a test expects)."""
        result = subprocess.run([program('kiln')] + list(args), env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if SANITIZER_REPORT_RE.search(result.stderr or ''):
            raise AssertionError('kiln %s: sanitizer report:\n%s' % (' '.join(args), result.stderr))
        return result

    def deploy(self, artifact, name):
        """`kiln deploy ARTIFACT --name NAME`; returns the new revision."""
        result = self.kiln('deploy', artifact, '--name', name)
        if result.returncode != 0:
            raise AssertionError('kiln deploy %s --name %s failed (%d):\n%s%s' % (
                artifact, name, result.returncode, result.stdout, result.stderr))
        match = re.search(r'revision (\d+)', result.stdout)
        if not match:
            raise AssertionError('kiln deploy printed no revision:\n' + result.stdout)
        return int(match.group(1))

    def runner_pids(self, app):
        """Live runner processes of this stack serving app (by their
        environment: KILN_APP and this stack's broker endpoint)."""
        endpoint = self.env['KILN_BROKER_ENDPOINT']
        found = []
        for pid in all_pids():
            if not alive(pid):
                continue
            env = proc_environ(pid)
            if env.get('KILN_APP') == app and env.get('KILN_BROKER_ENDPOINT') == endpoint \
                    and env.get('KILN_RUNNER_ID'):
                found.append(pid)
        return found

    # -- the queue API ---------------------------------------------------

    def queue_submit(self, path, payload=None, headers=None, query='', timeout=30.0):
        """POST /queue{path}{query} (path: "/owner/app[/sub]"): (status,
        headers, obj). Fails if the answer is not JSON."""
        status, hdrs, data = self.http('POST', '/queue' + path + query, payload,
                                       headers=headers, timeout=timeout)
        try:
            obj = json.loads(data)
        except ValueError:
            raise AssertionError('queue submit to %s answered %d with a body that is not '
                                 'JSON: %r' % (path, status, data[:300]))
        return status, hdrs, obj

    def queue_status(self, app, request_id, logs=False, timeout=30.0):
        """GET /queue/{app}/requests/{id}/status[?logs=1]: (status, obj);
        obj is None when the body is not JSON."""
        path = '/queue/%s/requests/%s/status%s' % (app, request_id, '?logs=1' if logs else '')
        status, _, data = self.http('GET', path, timeout=timeout)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, None

    def wait_state(self, app, request_id, states, timeout=30.0, logs=False):
        """Polls the status until its "status" is one of states (a name or
        a tuple of names); returns the status object."""
        if isinstance(states, str):
            states = (states,)

        def reached():
            status, obj = self.queue_status(app, request_id, logs=logs, timeout=5)
            if status == 404:
                raise AssertionError('request %s is not found (404) while waiting for %s'
                                     % (request_id, '/'.join(states)))
            return obj if obj and obj.get('status') in states else None
        return wait_until(reached, timeout, interval=0.02,
                          what='request %s to be %s' % (request_id, '/'.join(states)))

    def request_ids(self, app):
        """Ids of every request record of app in Redis (SCAN of kiln:req:*)."""
        found = []
        with self.redis() as r:
            for key in r.scan_keys('kiln:req:*'):
                if key.count(':') != 2:
                    continue            # kiln:req:{id}:logs
                if (r.command('HGET', key, 'app') or b'').decode() == app:
                    found.append(key[len('kiln:req:'):])
        return found

    def record(self, request_id):
        """The request's record in Redis, {} when there is none."""
        with self.redis() as r:
            return r.hgetall('kiln:req:' + request_id)

    def sse(self, path, timeout=30.0):
        """Opens a server-sent event stream; see EventStream."""
        return EventStream(self.http_port, path, timeout)


class EventStream:
    """A server-sent event stream from 127.0.0.1:port: status and headers
    at once, then events() yields (monotonic arrival time, data) per
    event, data decoded as JSON when it is JSON. Ends when the server
    ends the stream; raises socket.timeout when nothing arrives for
    `timeout` seconds."""

    def __init__(self, port, path, timeout=30.0):
        self.conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
        self.conn.request('GET', path, headers={'Accept': 'text/event-stream'})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}

    def body(self):
        return self.resp.read()

    def events(self):
        data_lines = []
        while True:
            line = self.resp.readline()
            if not line:
                return
            line = line.rstrip(b'\r\n')
            if line == b'':
                if data_lines:
                    text = b'\n'.join(data_lines).decode('utf-8', 'replace')
                    data_lines = []
                    try:
                        yield time.monotonic(), json.loads(text)
                    except ValueError:
                        yield time.monotonic(), text
                continue
            if line.startswith(b':'):
                continue                # an SSE comment: a keep-alive
            field, _, value = line.partition(b':')
            if value.startswith(b' '):
                value = value[1:]
            if field == b'data':
                data_lines.append(value)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#  ---------------------------------------------------------------------
#  A webhook receiver: what a kiln user's server would be

class WebhookReceiver:
    """An HTTP server in a thread on a free loopback port that records
    every POST it gets: (monotonic time, path, headers, body bytes).
    Answers with the statuses in `answers`, one per delivery in order,
    then 200 to every later one (set_answers changes the plan).

        with WebhookReceiver(answers=[500, 500]) as hook:
            ... submit with ?fal_webhook=hook.url('/done') ...
            hook.wait_for(3)
    """

    def __init__(self, answers=()):
        import http.server
        receiver = self
        self.lock = threading.Lock()
        self.deliveries = []
        self.answers = list(answers)
        self.on_delivery = None          # called (in the server thread) after each answer

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def do_POST(self):
                size = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(size) if size else b''
                with receiver.lock:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.deliveries.append(
                        (time.monotonic(), self.path,
                         {k.lower(): v for k, v in self.headers.items()}, body))
                    count = len(receiver.deliveries)
                reply = b'{"ok": %s}' % (b'true' if status < 300 else b'false')
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                self.wfile.flush()
                if receiver.on_delivery:
                    receiver.on_delivery(count)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path='/hook'):
        return 'http://127.0.0.1:%d%s' % (self.port, path)

    def set_answers(self, answers):
        with self.lock:
            self.answers = list(answers)

    def received(self, path=None):
        """The deliveries so far (to path, when given)."""
        with self.lock:
            return [d for d in self.deliveries if path is None or d[1] == path]

    def wait_for(self, count, path=None, timeout=20.0):
        """Waits until at least count deliveries (to path) arrived;
        returns them."""
        return wait_until(lambda: len(self.received(path)) >= count and self.received(path),
                          timeout, interval=0.01,
                          what='%d webhook deliveries to %s' % (count, path or 'the receiver'))

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class KilnTestCase(unittest.TestCase):
    """A test class with one Stack (cls.stack) for all its tests; prints
    the tail of every log when a test fails."""

    stack = None

    @classmethod
    def start_stack(cls, **kwargs):
        cls.stack = Stack(name=cls.__name__.lower(), **kwargs)
        try:
            cls.stack.start()
        except BaseException:
            cls.stack.dump_logs()
            cls.stack.close()
            raise
        return cls.stack

    @classmethod
    def deploy_or_dump(cls, artifact, name):
        try:
            return cls.stack.deploy(artifact, name)
        except BaseException:
            cls.stack.dump_logs()
            cls.stack.close()
            cls.stack = None
            raise

    @classmethod
    def tearDownClass(cls):
        """Stops the stack; fails the class if a process did not stop
        cleanly or a sanitizer reported a bug."""
        if cls.stack is not None:
            problems = cls.stack.close()
            cls.stack = None
            if problems:
                raise AssertionError('; '.join(problems))

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        outcome = super().run(result)
        if len(result.failures) + len(result.errors) > before and self.stack is not None:
            sys.stderr.write('\n%s failed; logs of %s:\n' % (self.id(), self.stack.dir))
            self.stack.dump_logs()
        return outcome

    def assertJsonError(self, status, headers, body, expected_status, error_type=None):
        """The answer is kiln's error shape: that status, JSON
        {detail, error_type}. Returns the decoded object."""
        self.assertEqual(status, expected_status, body[:300])
        self.assertTrue(headers.get('content-type', '').startswith('application/json'),
                        'content type %r' % headers.get('content-type'))
        obj = json.loads(body)
        self.assertIsInstance(obj.get('detail'), str, obj)
        self.assertTrue(obj['detail'], obj)
        self.assertIsInstance(obj.get('error_type'), str, obj)
        if error_type is not None:
            self.assertEqual(obj['error_type'], error_type, obj)
        return obj


class QueueTestCase(KilnTestCase):
    """A KilnTestCase for the queue API with helpers bound to one app
    (cls.app, by default local/slowlog: tests/apps/slowlog.c, which logs
    {"lines": M} lines every {"interval_ms": N} and can be cancelled)."""

    app = 'local/slowlog'

    def submit(self, payload=None, sub='', headers=None, query='', app=None):
        """POST /queue/{app}{sub}{query}; checks 200 and a request id;
        returns the answer's object."""
        status, _, obj = self.stack.queue_submit(
            '/%s%s' % (app or self.app, sub), payload if payload is not None else {},
            headers=headers, query=query)
        self.assertEqual(status, 200, obj)
        self.assertRegex(obj.get('request_id', ''), UUID4_RE)
        return obj

    def status(self, request_id, logs=False, app=None):
        """(HTTP status, status object)."""
        return self.stack.queue_status(app or self.app, request_id, logs=logs)

    def wait_state(self, request_id, states, timeout=30.0, logs=False, app=None):
        return self.stack.wait_state(app or self.app, request_id, states, timeout, logs=logs)

    def wait_completed(self, *request_ids, timeout=30.0):
        """Waits for each request to be COMPLETED; their status objects."""
        return [self.wait_state(i, 'COMPLETED', timeout) for i in request_ids]

    def result(self, request_id, app=None, timeout=30.0):
        """GET /queue/{app}/requests/{id}: (status, headers, body)."""
        return self.stack.http('GET', '/queue/%s/requests/%s' % (app or self.app, request_id),
                               timeout=timeout)

    def hold_the_runner(self, lines, interval_ms=100):
        """Submits a slowlog run that holds the app's runner for about
        (lines - 1) * interval_ms, and waits until it runs; its id. With
        one slot, later requests queue behind it."""
        request_id = self.submit({'lines': lines, 'interval_ms': interval_ms})['request_id']
        self.wait_state(request_id, 'IN_PROGRESS')
        return request_id


def main():
    unittest.main(verbosity=2)
