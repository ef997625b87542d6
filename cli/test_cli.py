"""The kiln CLI: help, usage errors (exit 2), failures (exit 1, one line
on stderr), and a whole `kiln up` driven through deploy, apps list, show
and delete, ending with a child that dies on its own (kiln up says which,
stops the rest and exits 1). Then live control and visibility against a
gateway with no broker, whose runner, worker and stats data the test
writes into Redis itself: kiln apps scale (PATCH /v1/apps/...), kiln
runners, kiln workers, failed starts in kiln apps show, GET /metrics."""

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
import unittest

SOURCE_DIR = os.environ.get('KILN_SOURCE_DIR') or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SOURCE_DIR, 'tests'))

import kiln_harness                                     # noqa: E402
from kiln_harness import (BUILD_DIR, alive, descendants, free_port, http_request,  # noqa: E402
                          pids_mentioning, wait_until)

KILN = os.path.join(BUILD_DIR, 'bin', 'kiln')
UP_START_TIMEOUT_S = 30
UP_STOP_TIMEOUT_S = 30


def built(name):
    return os.access(os.path.join(BUILD_DIR, 'bin', name), os.X_OK)


def clean_env(**extra):
    """The environment without any KILN_* setting of the caller's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('KILN_') or k in ('KILN_BUILD_DIR', 'KILN_SOURCE_DIR')}
    env.update(extra)
    return env


def kiln(*args, env=None, timeout=60):
    return subprocess.run([KILN] + list(args), env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


class CommandLineTest(unittest.TestCase):
    """What needs no running stack."""

    def assertOneLineError(self, result, status, pattern=None):
        self.assertEqual(result.returncode, status, result)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, 'want one line on stderr: %r' % result.stderr)
        self.assertTrue(lines[0].startswith('kiln: '), lines[0])
        if pattern:
            self.assertRegex(lines[0], pattern)
        return lines[0]

    def test_help(self):
        for args in (['--help'], ['-h'], ['help']):
            result = kiln(*args)
            self.assertEqual(result.returncode, 0, result)
            self.assertIn('usage: kiln', result.stdout)
            for command in ('up', 'run', 'deploy', 'apps', 'apps scale', 'logs', 'requests',
                            'runners', 'workers'):
                self.assertIn(command, result.stdout)

    def test_every_command_has_help(self):
        for command in ('up', 'run', 'deploy', 'apps', 'logs', 'requests', 'runners', 'workers',
                        'help'):
            for args in ([command, '--help'], ['help', command]):
                result = kiln(*args)
                self.assertEqual(result.returncode, 0, result)
                self.assertIn('usage: kiln ' + command, result.stdout)

    def test_version(self):
        result = kiln('--version')
        self.assertEqual(result.returncode, 0, result)
        self.assertRegex(result.stdout, r'^kiln \d+\.\d+')

    def test_usage_errors_exit_2(self):
        self.assertEqual(kiln().returncode, 2)
        self.assertOneLineError(kiln('frobnicate'), 2, 'unknown command')
        self.assertOneLineError(kiln('--bogus'), 2, 'unknown option')
        self.assertOneLineError(kiln('deploy'), 2, 'APP.so')
        self.assertOneLineError(kiln('deploy', 'a.so', '--bogus'), 2, 'unknown option --bogus')
        self.assertOneLineError(kiln('deploy', 'a.so', '--name'), 2, '--name needs a value')
        self.assertOneLineError(kiln('deploy', 'a.so', '--name', 'NoSlash'), 2, 'invalid app name')
        self.assertOneLineError(kiln('deploy', 'a.so', '--name', 'v1/app'), 2, 'reserved')
        self.assertOneLineError(kiln('apps'), 2, 'subcommand')
        self.assertOneLineError(kiln('apps', 'show'), 2, 'OWNER/APP')
        self.assertOneLineError(kiln('apps', 'launch'), 2, 'unknown apps subcommand')
        self.assertOneLineError(kiln('up', '--redis-port', 'x'), 2, 'port')
        self.assertOneLineError(kiln('up', 'extra'), 2, 'no argument')
        self.assertOneLineError(kiln('apps', 'scale', 'me/app'), 2, 'at least one of')
        self.assertOneLineError(kiln('apps', 'scale', 'me/app', '--max', '-1'), 2,
                                '--max needs a whole number')
        self.assertOneLineError(kiln('apps', 'scale', 'me/app', '--keep-alive', 'soon'), 2,
                                '--keep-alive needs a whole number')
        self.assertOneLineError(kiln('apps', 'scale', 'me/app', '--min', '1.5'), 2,
                                '--min needs a whole number')
        self.assertOneLineError(kiln('apps', 'scale', 'me/app', '--min', '3', '--max', '2'), 2,
                                'above --max')
        self.assertOneLineError(kiln('apps', 'scale', 'me/app', '--max', '0'), 2, 'at least 1')
        self.assertOneLineError(kiln('apps', 'scale', 'me/app', '--min'), 2, 'needs a value')
        self.assertOneLineError(kiln('apps', 'scale', 'Bad', '--min', '1'), 2, 'invalid app name')
        self.assertOneLineError(kiln('apps', 'show', 'me/app', '--min', '1'), 2,
                                'for apps scale only')
        self.assertOneLineError(kiln('runners', 'extra'), 2, 'no argument')
        self.assertOneLineError(kiln('runners', '--app', 'nope'), 2, 'invalid app name')
        self.assertOneLineError(kiln('runners', '--bogus'), 2, 'unknown option --bogus')
        self.assertOneLineError(kiln('workers', '--app', 'me/app'), 2, 'unknown option --app')
        self.assertOneLineError(kiln('logs'), 2, 'OWNER/APP')
        self.assertOneLineError(kiln('logs', 'Bad'), 2, 'invalid app name')
        self.assertOneLineError(kiln('logs', 'me/app', '--limit', 'x'), 2, '--limit needs')
        self.assertOneLineError(kiln('run'), 2, 'APP.so')
        self.assertOneLineError(kiln('run', 'a.so', 'b.so'), 2, 'one file')
        self.assertOneLineError(kiln('run', 'a.so', '--bogus'), 2, 'unknown option --bogus')

    def test_unreachable_gateway(self):
        #  Exit 4: the gateway could not be reached
        port = free_port()
        url = 'http://127.0.0.1:%d' % port
        want = r'^kiln: cannot reach the gateway at %s \(connection refused\)$' % re.escape(url)
        self.assertOneLineError(kiln('apps', 'list', env=clean_env(KILN_URL=url)), 4, want)
        self.assertOneLineError(kiln('--url', url, 'apps', 'list'), 4, want)
        self.assertOneLineError(kiln('apps', 'show', 'me/app', '--url', url), 4, want)
        self.assertOneLineError(kiln('apps', 'delete', 'me/app', '--url', url), 4, want)
        self.assertOneLineError(kiln('apps', 'scale', 'me/app', '--min', '1', '--url', url), 4, want)
        self.assertOneLineError(kiln('apps', 'revisions', 'me/app', '--url', url), 4, want)
        self.assertOneLineError(kiln('runners', '--url', url), 4, want)
        self.assertOneLineError(kiln('workers', '--url', url), 4, want)
        self.assertOneLineError(kiln('logs', 'me/app', '--url', url), 4, want)
        self.assertOneLineError(kiln('logs', 'me/app', '--follow', '--url', url), 4, want)
        self.assertOneLineError(kiln('requests', 'show', '00000000-0000-4000-8000-000000000000',
                                     '--url', url), 4, want)

    def test_deploy_missing_file(self):
        #  Exit 1: a failure that is not the gateway's (no request was sent)
        self.assertOneLineError(kiln('deploy', '/nonexistent/app.so'), 1,
                                'cannot read /nonexistent/app.so: No such file')
        self.assertOneLineError(kiln('deploy', '/nope.so'), 1, 'cannot read /nope.so: No such file')
        self.assertOneLineError(kiln('run', 'nope.py::X'), 1, 'cannot read nope.py: No such file')

    @unittest.skipUnless(built('kiln-runner'), 'kiln-runner is not built')
    def test_deploy_not_an_app(self):
        with tempfile.NamedTemporaryFile(suffix='.so') as f:
            f.write(b'this is not a shared library\n')
            f.flush()
            self.assertOneLineError(kiln('deploy', f.name), 1, 'is not a kiln app')

    @unittest.skipUnless(built('kiln-broker') and built('kiln-gateway') and built('kiln-worker'),
                         'the kiln programs are not built')
    def test_up_redis_port_taken(self):
        with socket.socket() as taken:
            taken.bind(('127.0.0.1', 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            with tempfile.TemporaryDirectory() as state:
                result = kiln('up', '--dir', state, '--redis-port', str(port),
                              env=clean_env(KILN_HTTP_ADDR='127.0.0.1:%d' % free_port()))
                line = self.assertOneLineError(result, 1, 'port %d is taken' % port)
                self.assertIn('KILN_REDIS_URL', line)


@unittest.skipUnless(all(built(p) for p in ('kiln-broker', 'kiln-gateway', 'kiln-worker',
                                             'kiln-runner')),
                     'the kiln programs are not built')
class UpTest(unittest.TestCase):
    """kiln up --no-examples, then the CLI against it."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='kiln-test-cli-')
        self.http_port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.http_port
        self.env = clean_env(
            KILN_HTTP_ADDR='127.0.0.1:%d' % self.http_port,
            KILN_URL=self.url,
            KILN_PUBLIC_URL=self.url,
            KILN_BROKER_ENDPOINT='tcp://127.0.0.1:%d' % free_port())
        self.log_path = os.path.join(self.dir, 'kiln-up.log')
        self.lines = []
        self.proc = None

    def tearDown(self):
        if self.proc is not None:
            kiln_harness.stop_process(self.proc, signal.SIGKILL)
            self.proc.stdout.close()
        for pid in pids_mentioning(self.dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        outcome = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            sys.stderr.write('\n===== kiln up output =====\n%s\n'
                             % kiln_harness.tail(self.log_path, 80))
        return outcome

    def start_up(self, *args):
        log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(
            [KILN, 'up', '--dir', os.path.join(self.dir, 'state'),
             '--redis-port', str(free_port())] + list(args),
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, preexec_fn=kiln_harness._set_pdeathsig)
        log.close()

        def read_stdout():
            with open(self.log_path, 'ab') as out:
                for raw in self.proc.stdout:
                    out.write(b'[stdout] ' + raw)
                    out.flush()
                    self.lines.append(raw.decode('utf-8', 'replace').rstrip('\n'))
        threading.Thread(target=read_stdout, daemon=True).start()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError('kiln up exited with %d' % self.proc.returncode)
            return any('Ctrl-C' in line for line in self.lines)
        wait_until(ready, UP_START_TIMEOUT_S, what='kiln up to be ready')

    def kiln(self, *args):
        return kiln(*args, env=self.env)

    def test_deploy_apps_and_a_dying_child(self):
        self.start_up('--no-examples')
        self.assertFalse(any('curl ' in line for line in self.lines), self.lines)
        #  The gateway requires keys: the CLI finds kiln up's saved one
        #  through the state dir
        state_dir = os.path.join(self.dir, 'state')
        self.env['KILN_STATE_DIR'] = state_dir
        with open(os.path.join(state_dir, 'key')) as f:
            auth = {'Authorization': 'Key ' + f.read().strip()}
        echo = os.path.join(BUILD_DIR, 'examples', 'echo.so')
        if not os.path.isfile(echo):
            self.skipTest('examples/echo.so is not built')

        result = self.kiln('deploy', echo, '--name', 'cli/echo')
        self.assertEqual(result.returncode, 0, result)
        self.assertRegex(result.stdout, r'^deployed cli/echo revision 1\n')
        self.assertIn('sync:  %s/cli/echo\n' % self.url, result.stdout)
        self.assertIn('queue: %s/queue/cli/echo\n' % self.url, result.stdout)
        result = self.kiln('deploy', echo, '--name', 'cli/echo')
        self.assertRegex(result.stdout, r'^deployed cli/echo revision 2\n')
        result = self.kiln('deploy', echo)          # default name: local/<manifest name>
        self.assertEqual(result.returncode, 0, result)
        self.assertRegex(result.stdout, r'^deployed local/echo revision \d+\n')

        status, _, body = http_request(self.http_port, 'POST', '/cli/echo', {'prompt': 'rhino'},
                                       headers=auth, timeout=60)
        self.assertEqual(status, 200, body)

        result = self.kiln('apps', 'list')
        self.assertEqual(result.returncode, 0, result)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0].split(), ['NAME', 'REVISION', 'MACHINE_TYPES', 'ARTIFACT',
                                            'UPDATED'])
        row = next(line.split() for line in lines if line.startswith('cli/echo '))
        self.assertEqual(row[1], '2')
        self.assertIn('CPU', row[2])
        self.assertRegex(row[3], r'^[0-9a-f]{12}$')

        result = self.kiln('apps', 'list', '--json')
        self.assertEqual(result.returncode, 0, result)
        json.loads(result.stdout)

        result = self.kiln('apps', 'show', 'cli/echo')
        self.assertEqual(result.returncode, 0, result)
        self.assertRegex(result.stdout, r'revision:\s+2')
        self.assertIn('%s/cli/echo' % self.url, result.stdout)

        result = self.kiln('apps', 'delete', 'cli/echo')
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout, 'deleted cli/echo\n')
        #  Exit 3: no such app
        result = self.kiln('apps', 'show', 'cli/echo')
        self.assertEqual(result.returncode, 3, result)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        result = self.kiln('apps', 'show', 'local/nope')
        self.assertEqual(result.returncode, 3, result)
        self.assertRegex(result.stderr, r'^kiln: App local/nope is not deployed\n$')
        result = self.kiln('logs', 'local/nope')
        self.assertEqual(result.returncode, 3, result)
        self.assertRegex(result.stderr, r'^kiln: App local/nope is not deployed\n$')

        #  A child that dies on its own takes the stack down, exit 1.
        started = descendants(self.proc.pid)
        gateway = next(pid for pid in started
                       if kiln_harness.proc_cmdline(pid)
                       and kiln_harness.proc_cmdline(pid)[0].endswith(b'kiln-gateway'))
        os.kill(gateway, signal.SIGKILL)
        status = self.proc.wait(UP_STOP_TIMEOUT_S)
        self.assertEqual(status, 1)
        self.assertIn('kiln-gateway exited unexpectedly',
                      kiln_harness.tail(self.log_path, 200))
        wait_until(lambda: not [pid for pid, start in started.items() if alive(pid, start)],
                   2, what='every process kiln up started to go')


def runner_view(runner_id, app, worker, state, **extra):
    """A runner as the broker publishes it in kiln:runners."""
    view = {'id': runner_id, 'app': app, 'revision': 1, 'worker': worker, 'host': 'host-' + worker,
            'machine_type': 'CPU', 'gpu': None, 'state': state, 'inflight': 0, 'served': 0,
            'idle_s': 0, 'started_ms': 1764350000000}
    view.update(extra)
    return json.dumps(view)


@unittest.skipUnless(built('kiln-gateway') and built('kiln-runner')
                     and os.path.isfile(os.path.join(BUILD_DIR, 'examples', 'echo.so')),
                     'the kiln programs or examples/echo.so are not built')
class ManageTest(kiln_harness.KilnTestCase):
    """Live control and visibility: redis and a gateway, no broker, so
    what the broker would publish is what the test writes."""

    @classmethod
    def setUpClass(cls):
        cls.stack = kiln_harness.Stack(name='climanage')
        try:
            cls.stack.start_redis()
            cls.stack.start_gateway()
            echo = os.path.join(BUILD_DIR, 'examples', 'echo.so')
            cls.stack.deploy(echo, 'cli/echo')
            cls.stack.deploy(echo, 'cli/other')
        except BaseException:
            cls.stack.dump_logs()
            cls.stack.close()
            cls.stack = None
            raise

    def kiln(self, *args):
        return self.stack.kiln(*args)

    def app(self, name):
        status, _, body = self.stack.http('GET', '/v1/apps/' + name)
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def patch(self, name, body):
        status, headers, data = self.stack.http('PATCH', '/v1/apps/' + name, body)
        return status, headers, data

    def test_scale_merges_overrides_and_refuses_nonsense(self):
        own = self.app('cli/echo')['manifest']
        with self.stack.redis() as r:
            revision = r.command('HGET', 'kiln:app:cli/echo', 'revision')
            r.command('SUBSCRIBE', 'kiln:changed')
            result = self.kiln('apps', 'scale', 'cli/echo', '--min', '2', '--max', '5',
                               '--keep-alive', '7')
            self.assertEqual(result.returncode, 0, result.stderr)
            #  The broker hears of it at once: the next message pushed
            #  to this subscribed connection
            self.assertEqual(r._read(), [b'message', b'kiln:changed', b'cli/echo'])
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], 'scaled cli/echo')
        self.assertRegex(result.stdout, r'min_concurrency:\s+2 .*scaled')
        self.assertRegex(result.stdout, r'max_concurrency:\s+5 ')
        self.assertRegex(result.stdout, r'keep_alive:\s+7 s ')
        self.assertRegex(result.stdout, r'concurrency_buffer:\s+%d\n' % own['concurrency_buffer'])

        app = self.app('cli/echo')
        self.assertEqual(app['scale'], {'min_concurrency': 2, 'max_concurrency': 5, 'keep_alive': 7})
        self.assertEqual(app['effective'], {'min_concurrency': 2, 'max_concurrency': 5,
                                            'keep_alive': 7,
                                            'concurrency_buffer': own['concurrency_buffer']})
        with self.stack.redis() as r:
            self.assertEqual(r.command('HGET', 'kiln:app:cli/echo', 'revision'), revision)

        #  A later change merges with the earlier ones; null drops one
        status, _, body = self.patch('cli/echo', {'concurrency_buffer': 2, 'keep_alive': None})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)['scale'], {'min_concurrency': 2, 'max_concurrency': 5,
                                                     'concurrency_buffer': 2})
        self.assertEqual(json.loads(body)['effective']['keep_alive'], own['keep_alive'])

        #  A min above the max in force is refused, whichever side moves
        for args in (['--min', '6'], ['--max', '1']):
            result = self.kiln('apps', 'scale', 'cli/echo', *args)
            self.assertEqual(result.returncode, 1, result)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
            self.assertIn('must not exceed', result.stderr)
        for body in ({'max_concurrency': 0}, {'min_concurrency': -1}, {'keep_alive': 'soon'},
                     {'keep_alive': 1.5}, {'bogus': 1}, {}, [], {'reset': 'yes'},
                     {'max_concurrency': 2 ** 31}):
            with self.subTest(body=body):
                status, headers, data = self.patch('cli/echo', body)
                self.assertJsonError(status, headers, data, 422, 'bad_request')
        status, headers, data = self.stack.http('PATCH', '/v1/apps/cli/echo', b'not json',
                                                headers={'Content-Type': 'application/json'})
        self.assertJsonError(status, headers, data, 422, 'bad_request')
        self.assertEqual(self.app('cli/echo')['scale'], {'min_concurrency': 2, 'max_concurrency': 5,
                                                         'concurrency_buffer': 2})
        status, headers, data = self.patch('cli/nope', {'min_concurrency': 1})
        self.assertJsonError(status, headers, data, 404, 'not_found')
        result = self.kiln('apps', 'scale', 'cli/nope', '--min', '1')
        self.assertEqual(result.returncode, 3, result)
        self.assertIn('not deployed', result.stderr)

        #  --reset goes back to the app's own values, then applies the rest
        result = self.kiln('apps', 'scale', 'cli/echo', '--reset', '--buffer', '1', '--json')
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)['scale'], {'concurrency_buffer': 1})
        result = self.kiln('apps', 'scale', 'cli/echo', '--reset')
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn('scaled;', result.stdout)
        self.assertEqual(self.app('cli/echo')['scale'], {})
        with self.stack.redis() as r:
            self.assertEqual(r.command('HEXISTS', 'kiln:app:cli/echo', 'scale'), 0)

    def test_apps_show_failed_starts_and_the_last_error(self):
        result = self.kiln('apps', 'show', 'cli/other')
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r'failed_starts:\s+0\n')
        self.assertRegex(result.stdout, r'last_error:\s+-\n')
        with self.stack.redis() as r:
            r.command('HSET', 'kiln:app:cli/other', 'failed_starts', '2',
                      'last_error', 'setup failed (exit 3): model weights not found',
                      'last_error_ms', '1764350000000')
        try:
            result = self.kiln('apps', 'show', 'cli/other')
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertRegex(result.stdout, r'failed_starts:\s+2\n')
            self.assertRegex(result.stdout,
                             r'last_error:\s+setup failed \(exit 3\): model weights not found \(at ')
            app = json.loads(self.kiln('apps', 'show', 'cli/other', '--json').stdout)
            self.assertEqual((app['failed_starts'], app['last_error'], app['last_error_ms']),
                             (2, 'setup failed (exit 3): model weights not found', 1764350000000))
            listed = json.loads(self.kiln('apps', 'list', '--json').stdout)['apps']
            other = next(a for a in listed if a['name'] == 'cli/other')
            self.assertEqual(other['failed_starts'], 2)
            self.assertIn('scale', other)
        finally:
            with self.stack.redis() as r:
                r.command('HDEL', 'kiln:app:cli/other', 'failed_starts', 'last_error',
                          'last_error_ms')

    def seed_runners(self):
        with self.stack.redis() as r:
            r.command('DEL', 'kiln:runners', 'kiln:workers')
            r.command('HSET', 'kiln:runners',
                      'r-bbbbbbbb-0001', runner_view('r-bbbbbbbb-0001', 'cli/echo', 'w-1', 'busy',
                                                     inflight=2, served=7),
                      'r-aaaaaaaa-0002', runner_view('r-aaaaaaaa-0002', 'cli/echo', 'w-2', 'ready',
                                                     machine_type='GPU-H100', gpu='1',
                                                     served=3, idle_s=75),
                      'r-cccccccc-0003', runner_view('r-cccccccc-0003', 'cli/other', 'w-1',
                                                     'starting'),
                      'r-dddddddd-0004', runner_view('r-dddddddd-0004', 'gone/app', 'w-2',
                                                     'draining'),
                      'r-broken', 'not json')
            r.command('HSET', 'kiln:workers',
                      'w-2', json.dumps({'id': 'w-2', 'host': 'gpu-box', 'slots': {'CPU': 4,
                                                                               'GPU-H100': 2},
                                         'used': {'GPU-H100': 1}, 'draining': True}),
                      'w-1', json.dumps({'id': 'w-1', 'host': 'cpu-box', 'slots': {'CPU': 8},
                                         'used': {'CPU': 2}, 'draining': False}))

    def test_runners_and_workers(self):
        self.seed_runners()
        result = self.kiln('runners')
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0].split(), ['ID', 'APP', 'WORKER', 'MACHINE', 'GPU', 'STATE',
                                            'INFLIGHT', 'SERVED', 'IDLE'])
        rows = [line.split() for line in lines[1:]]
        #  Sorted by app then id; short ids; idle only when it means something
        self.assertEqual(rows, [
            ['r-aaaaaaaa', 'cli/echo', 'w-2', 'GPU-H100', '1', 'ready', '0', '3', '1m15s'],
            ['r-bbbbbbbb', 'cli/echo', 'w-1', 'CPU', '-', 'busy', '2', '7', '-'],
            ['r-cccccccc', 'cli/other', 'w-1', 'CPU', '-', 'starting', '0', '0', '-'],
            ['r-dddddddd', 'gone/app', 'w-2', 'CPU', '-', 'draining', '0', '0', '0s']])

        result = self.kiln('runners', '--app', 'cli/echo', '--json')
        self.assertEqual(result.returncode, 0, result.stderr)
        listed = json.loads(result.stdout)['runners']
        self.assertEqual([r['id'] for r in listed], ['r-aaaaaaaa-0002', 'r-bbbbbbbb-0001'])
        self.assertEqual(listed[0]['gpu'], '1')
        result = self.kiln('runners', '--app', 'cli/nobody')
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(result.stdout.splitlines()), 1, result.stdout)
        status, headers, body = self.stack.http('GET', '/v1/runners?app=No/Such')
        self.assertJsonError(status, headers, body, 400, 'bad_request')

        result = self.kiln('workers')
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([line.split() for line in result.stdout.splitlines()], [
            ['ID', 'HOST', 'SLOTS', 'USED', 'DRAINING'],
            ['w-1', 'cpu-box', 'CPU=8', 'CPU=2', 'no'],
            ['w-2', 'gpu-box', 'CPU=4,GPU-H100=2', 'CPU=0,GPU-H100=1', 'yes']])
        result = self.kiln('workers', '--json')
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([w['id'] for w in json.loads(result.stdout)['workers']], ['w-1', 'w-2'])

    def test_metrics(self):
        self.seed_runners()
        with self.stack.redis() as r:
            r.command('DEL', 'kiln:stats:cli/echo')
            #  Each request in the first bucket it fits (in:{ms}, as the
            #  complete script counts); /metrics adds them up into le
            r.command('HSET', 'kiln:stats:cli/echo', 'status:200', '4', 'status:500', '1',
                      'latency_count', '5', 'latency_sum_ms', '2345',
                      'in:5', '1', 'in:25', '1', 'in:100', '1', 'in:1000', '1', 'in:2500', '1')
            r.command('ZADD', 'kiln:queue:cli/other', '1', 'a', '2', 'b')
        try:
            status, headers, body = self.stack.http('GET', '/metrics')
        finally:
            with self.stack.redis() as r:
                r.command('DEL', 'kiln:queue:cli/other')
        self.assertEqual(status, 200)
        self.assertEqual(headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8')
        text = body.decode()
        lines = text.splitlines()
        samples = dict(line.rsplit(' ', 1) for line in lines if line and not line.startswith('#'))

        #  Every family has its HELP and TYPE, once, before its samples
        families = {}
        for line in lines:
            if line.startswith('# TYPE '):
                _, _, name, kind = line.split()
                self.assertNotIn(name, families)
                families[name] = kind
                self.assertTrue(lines[lines.index(line) - 1].startswith('# HELP %s ' % name))
        self.assertEqual(families['kiln_runners'], 'gauge')
        self.assertEqual(families['kiln_queue_depth'], 'gauge')
        self.assertEqual(families['kiln_requests_total'], 'counter')
        self.assertEqual(families['kiln_request_duration_seconds'], 'histogram')
        self.assertEqual(families['kiln_gateway_redis_up'], 'gauge')

        def sample(name):
            self.assertIn(name, samples, text)
            return float(samples[name])
        #  Every state of every app, 0 when none; a deleted app's runners too
        self.assertEqual(sample('kiln_runners{app="cli/echo",state="busy"}'), 1)
        self.assertEqual(sample('kiln_runners{app="cli/echo",state="ready"}'), 1)
        self.assertEqual(sample('kiln_runners{app="cli/echo",state="starting"}'), 0)
        self.assertEqual(sample('kiln_runners{app="cli/echo",state="draining"}'), 0)
        self.assertEqual(sample('kiln_runners{app="cli/other",state="starting"}'), 1)
        self.assertEqual(sample('kiln_runners{app="gone/app",state="draining"}'), 1)
        self.assertEqual(sample('kiln_queue_depth{app="cli/other"}'), 2)
        self.assertEqual(sample('kiln_queue_depth{app="cli/echo"}'), 0)
        self.assertEqual(sample('kiln_requests_total{app="cli/echo",status="200"}'), 4)
        self.assertEqual(sample('kiln_requests_total{app="cli/echo",status="500"}'), 1)
        buckets = [(l.split('le="')[1].split('"')[0], float(l.rsplit(' ', 1)[1])) for l in lines
                   if l.startswith('kiln_request_duration_seconds_bucket{app="cli/echo"')]
        self.assertEqual(buckets[0], ('0.005', 1))
        self.assertEqual(buckets[-1], ('+Inf', 5))
        self.assertIn(('0.1', 3), buckets)
        self.assertIn(('60', 5), buckets)
        counts = [count for _, count in buckets]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(sample('kiln_request_duration_seconds_sum{app="cli/echo"}'), 2.345)
        self.assertEqual(sample('kiln_request_duration_seconds_count{app="cli/echo"}'), 5)
        self.assertEqual(sample('kiln_request_duration_seconds_count{app="cli/other"}'), 0)
        self.assertEqual(sample('kiln_worker_slots{worker="w-2",machine_type="GPU-H100"}'), 2)
        self.assertEqual(sample('kiln_worker_slots_used{worker="w-2",machine_type="CPU"}'), 0)
        self.assertEqual(sample('kiln_worker_draining{worker="w-2"}'), 1)
        self.assertEqual(sample('kiln_gateway_redis_up'), 1)


if __name__ == '__main__':
    kiln_harness.main()
