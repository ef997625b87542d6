"""`kiln up`: the whole local stack in the foreground. It prints a curl
line that works, and Ctrl-C stops everything it started, exit status 0.
Its gateway requires API keys: the operator key kiln up saves in its
state dir is what the curl line and the CLI use (--no-auth: none)."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.parse

import kiln_harness
from kiln_harness import (alive, descendants, free_ports, http_request, pids_mentioning,
                          program, wait_until)

UP_START_TIMEOUT_S = 30
UP_STOP_TIMEOUT_S = 30


def parse_curl(line):
    """(method, url, headers, data) from a printed curl command line."""
    args = shlex.split(line[line.index('curl'):])
    method, url, headers, data = 'GET', None, {}, None
    i = 1
    while i < len(args):
        arg = args[i]
        if arg in ('-X', '--request'):
            method = args[i + 1]
            i += 1
        elif arg in ('-H', '--header'):
            name, _, value = args[i + 1].partition(':')
            headers[name.strip()] = value.strip()
            i += 1
        elif arg in ('-d', '--data', '--data-raw', '--data-binary'):
            data = args[i + 1]
            if method == 'GET':
                method = 'POST'
            i += 1
        elif arg.startswith('http://') or arg.startswith('https://'):
            url = arg
        i += 1
    return method, url, headers, data


class UpTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='kiln-test-up-')
        self.http_port, self.broker_port, self.redis_port = free_ports(3)
        self.env = dict(os.environ)
        for name in list(self.env):
            if name.startswith('KILN_') and name not in ('KILN_BUILD_DIR', 'KILN_SOURCE_DIR'):
                del self.env[name]
        self.env.update({
            'KILN_HTTP_ADDR': '127.0.0.1:%d' % self.http_port,
            'KILN_URL': 'http://127.0.0.1:%d' % self.http_port,
            'KILN_PUBLIC_URL': 'http://127.0.0.1:%d' % self.http_port,
            'KILN_BROKER_ENDPOINT': 'tcp://127.0.0.1:%d' % self.broker_port,
        })
        self.proc = None
        self.reader = None
        self.lines = []
        self.log_path = os.path.join(self.dir, 'kiln-up.log')

    def tearDown(self):
        if self.proc is not None:
            kiln_harness.stop_process(self.proc, signal.SIGKILL)
            if self.reader is not None:
                self.reader.join(5)
            self.proc.stdout.close()
        for pid in pids_mentioning(self.dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not os.environ.get('KILN_TEST_KEEP'):
            shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        outcome = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            sys.stderr.write('\n===== kiln up output =====\n%s\n' % kiln_harness.tail(
                self.log_path, 80))
        return outcome

    def start_up(self, *args):
        """Starts `kiln up` (stderr to the log; stdout read line by line)
        and returns the curl line it prints."""
        self.state_dir = os.path.join(self.dir, 'state')
        self.proc = kiln_harness.spawn(
            [program('kiln'), 'up', '--dir', self.state_dir, '--redis-port', str(self.redis_port)]
            + list(args), self.env, self.log_path, stdout=subprocess.PIPE)

        def read_stdout():
            with open(self.log_path, 'ab') as out:
                for raw in self.proc.stdout:
                    out.write(b'[stdout] ' + raw)
                    out.flush()
                    self.lines.append(raw.decode('utf-8', 'replace').rstrip('\n'))
        self.reader = threading.Thread(target=read_stdout, daemon=True)
        self.reader.start()

        def curl_line():
            if self.proc.poll() is not None:
                raise AssertionError('kiln up exited with %d' % self.proc.returncode)
            return next((l for l in self.lines if 'curl ' in l), None)
        return wait_until(curl_line, UP_START_TIMEOUT_S, what='kiln up to print its curl line')

    def saved_key(self):
        with open(os.path.join(self.state_dir, 'key')) as f:
            return f.read().strip()

    def run_curl_line(self, line):
        method, url, headers, data = parse_curl(line)
        #  What the shell does with the printed line, after the printed
        #  export KILN_KEY=$(cat STATE/key)
        if '$KILN_KEY' in headers.get('Authorization', ''):
            headers['Authorization'] = headers['Authorization'].replace(
                '$KILN_KEY', self.saved_key())
        self.assertIsNotNone(url, 'no URL in %r' % line)
        parts = urllib.parse.urlsplit(url)
        self.assertIn(parts.hostname, ('127.0.0.1', 'localhost'), line)
        self.assertEqual(parts.port, self.http_port, 'the curl line ignores KILN_URL: ' + line)
        status, resp_headers, body = http_request(
            self.http_port, method, parts.path + ('?' + parts.query if parts.query else ''),
            data, headers, timeout=60)
        self.assertEqual(status, 200, body[:300])
        obj = json.loads(body)
        if data is not None and headers.get('Content-Type', '').startswith('application/json'):
            self.assertEqual(obj.get('input'), json.loads(data), obj)
        self.assertRegex(resp_headers.get('x-fal-request-id', ''), kiln_harness.UUID4_RE)

    def stop_and_check(self, send_sigint):
        """Interrupts kiln up and checks it exits 0 leaving nothing behind."""
        started = descendants(self.proc.pid)
        names = {pid: os.path.basename(kiln_harness.proc_cmdline(pid)[0].decode())
                 for pid in started if kiln_harness.proc_cmdline(pid)}
        for wanted in ('redis-server', 'kiln-broker', 'kiln-gateway', 'kiln-worker',
                       'kiln-runner'):
            self.assertTrue(any(wanted in n for n in names.values()),
                            '%s is not among the processes kiln up started: %r'
                            % (wanted, sorted(names.values())))
        send_sigint()
        try:
            status = self.proc.wait(UP_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.fail('kiln up did not stop within %d s of SIGINT' % UP_STOP_TIMEOUT_S)
        self.assertEqual(status, 0, 'kiln up exit status')

        def left_behind():
            left = [(pid, names.get(pid)) for pid, start in started.items()
                    if alive(pid, start)]
            return left + [(pid, 'mentions the state dir') for pid in pids_mentioning(self.dir)]
        #  Exit 0 should mean all is stopped; allow a moment for the
        #  kernel to finish tearing the last ones down.
        try:
            wait_until(lambda: not left_behind(), 2, what='processes to go')
        except AssertionError:
            self.fail('processes left behind by kiln up: %r' % (left_behind(),))
        self.reader.join(5)
        with open(self.log_path, 'rb') as f:
            output = f.read().decode('utf-8', 'replace')
        self.assertNotRegex(output, kiln_harness.SANITIZER_REPORT_RE)

    def test_up_curl_line_and_sigint(self):
        line = self.start_up()
        self.run_curl_line(line)
        self.stop_and_check(lambda: self.proc.send_signal(signal.SIGINT))

    def test_up_stops_on_ctrl_c_to_the_process_group(self):
        #  What a terminal does on Ctrl-C: SIGINT to the whole foreground
        #  process group, kiln up and its children alike.
        line = self.start_up()
        self.run_curl_line(line)
        self.stop_and_check(lambda: os.killpg(self.proc.pid, signal.SIGINT))


    def test_up_requires_the_saved_key(self):
        line = self.start_up()
        self.assertIn('Authorization: Key $KILN_KEY', line)
        self.assertTrue(any('export KILN_KEY=$(cat ' in l for l in self.lines), self.lines)
        key_path = os.path.join(self.state_dir, 'key')
        self.assertEqual(os.stat(key_path).st_mode & 0o777, 0o600)
        self.assertRegex(self.saved_key(), r'^[0-9a-f-]{36}:[0-9a-f]{64}$')
        self.run_curl_line(line)
        #  Without the key: 401, on calls and on the management API
        method, url, headers, data = parse_curl(line)
        path = urllib.parse.urlsplit(url).path
        status, resp_headers, body = http_request(self.http_port, 'POST', path, data,
                                                  {'Content-Type': 'application/json'})
        self.assertEqual(status, 401, body)
        self.assertEqual(resp_headers.get('www-authenticate'), 'Key')
        self.assertEqual(http_request(self.http_port, 'GET', '/v1/apps')[0], 401)
        #  The CLI finds the saved key by the state dir, with no KILN_KEY
        env = dict(self.env, KILN_STATE_DIR=self.state_dir)
        listed = subprocess.run([program('kiln'), 'apps', 'list'], env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn(path.strip('/'), listed.stdout)
        keys = subprocess.run([program('kiln'), 'keys', 'list'], env=env,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(keys.returncode, 0, keys.stderr)
        self.assertIn(self.saved_key().split(':')[0], keys.stdout)
        self.assertNotIn(self.saved_key().split(':')[1], keys.stdout)
        #  Without it, the CLI is refused
        env = dict(self.env, KILN_STATE_DIR=os.path.join(self.dir, 'elsewhere'))
        refused = subprocess.run([program('kiln'), 'apps', 'list'], env=env,
                                 capture_output=True, text=True, timeout=60)
        self.assertNotEqual(refused.returncode, 0, refused.stdout)
        self.stop_and_check(lambda: self.proc.send_signal(signal.SIGINT))

    def test_up_no_auth_says_so(self):
        line = self.start_up('--no-auth')
        self.assertNotIn('Authorization', line)
        self.assertTrue(any('API keys are OFF' in l for l in self.lines), self.lines)
        self.run_curl_line(line)
        self.assertEqual(http_request(self.http_port, 'GET', '/v1/apps')[0], 200)
        self.assertFalse(os.path.exists(os.path.join(self.state_dir, 'key')))
        self.stop_and_check(lambda: self.proc.send_signal(signal.SIGINT))


if __name__ == '__main__':
    kiln_harness.main()
