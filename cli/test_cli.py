"""The kiln CLI: help, usage errors (exit 2), failures (exit 1, one line
on stderr), and a whole `kiln up` driven through deploy, apps list, show
and delete, ending with a child that dies on its own (kiln up says which,
stops the rest and exits 1)."""

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
            for command in ('up', 'deploy', 'apps'):
                self.assertIn(command, result.stdout)

    def test_every_command_has_help(self):
        for command in ('up', 'deploy', 'apps', 'help'):
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

    def test_unreachable_gateway(self):
        port = free_port()
        url = 'http://127.0.0.1:%d' % port
        want = r'^kiln: cannot reach the gateway at %s \(connection refused\)$' % re.escape(url)
        self.assertOneLineError(kiln('apps', 'list', env=clean_env(KILN_URL=url)), 1, want)
        self.assertOneLineError(kiln('--url', url, 'apps', 'list'), 1, want)
        self.assertOneLineError(kiln('apps', 'delete', 'me/app', '--url', url), 1, want)

    def test_deploy_missing_file(self):
        self.assertOneLineError(kiln('deploy', '/nonexistent/app.so'), 1,
                                'cannot read /nonexistent/app.so: No such file')

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
                                       timeout=60)
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
        result = self.kiln('apps', 'show', 'cli/echo')
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)

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


if __name__ == '__main__':
    kiln_harness.main()
