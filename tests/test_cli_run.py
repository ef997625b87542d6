"""`kiln run`: the echo example deployed under a fresh name, its URLs on
stdout, a call that answers, the runner's log lines streamed (its own
output and the handler's line), and after SIGINT (or SIGTERM) the app
deleted and kiln exiting 0. Also a run of a file that is not there."""

import re
import signal
import subprocess
import threading
import time
import uuid

import kiln_harness
from kiln_harness import program, wait_until

#  How long kiln run gets to deploy and see its runner ready.
RUN_START_TIMEOUT_S = 60
#  How long it gets to delete the app and exit after a signal.
RUN_STOP_TIMEOUT_S = 30


class Run:
    """`kiln run ARGS` in the background, its stdout read line by line."""

    def __init__(self, stack, *args):
        self.proc = subprocess.Popen([program('kiln'), 'run'] + list(args), env=stack.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip('\n'))

    def output(self):
        return '\n'.join(self.lines)

    def wait_for(self, pattern, timeout=RUN_START_TIMEOUT_S):
        """The first stdout line matching pattern (a regex match object)."""
        def found():
            if self.proc.poll() is not None and not self.reader.is_alive():
                raise AssertionError('kiln run exited %d early:\n%s\n%s' % (
                    self.proc.returncode, self.output(), self.proc.stderr.read()))
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            return None
        return wait_until(found, timeout, interval=0.1,
                          what='kiln run to print %r; it printed:\n%s' % (pattern, self.output()))

    def stop(self, sig=signal.SIGINT):
        """Signals it; returns (exit status, stderr)."""
        self.proc.send_signal(sig)
        try:
            status = self.proc.wait(RUN_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError('kiln run did not exit within %d s of the signal:\n%s'
                                 % (RUN_STOP_TIMEOUT_S, self.output()))
        self.reader.join(5)
        return status, self.proc.stderr.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


class CliRunTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()

    def run_echo_until(self, sig):
        run = Run(self.stack, kiln_harness.example('echo'))
        try:
            name = run.wait_for(r'^deployed (local/echo-run-[0-9a-f]{6}) revision 1$').group(1)
            sync = run.wait_for(r'^sync:\s+(\S+)$').group(1)
            run.wait_for(r'^queue:\s+\S+/queue/%s$' % re.escape(name))
            self.assertEqual(sync, '%s/%s' % (self.stack.url, name))

            #  The runner's own output is streamed (it comes up at once:
            #  a run keeps one runner)
            run.wait_for(r'\[r-[0-9a-f]{8}\] setup done')

            marker = str(uuid.uuid4())
            status, headers, obj = self.stack.call('/' + name, {'marker': marker})
            self.assertEqual(status, 200, obj)
            self.assertEqual(obj['input'], {'marker': marker})
            request_id = headers['x-fal-request-id']
            #  ... and the handler's line, with its request
            run.wait_for(r'INFO +\[r-[0-9a-f]{8}\] echoing \d+ bytes on / \(request %s\)'
                         % re.escape(request_id))

            status, stderr = run.stop(sig)
            self.assertEqual(status, 0, run.output() + '\n' + stderr)
            self.assertIn('deleted %s' % name, run.lines)
        finally:
            run.close()

        #  The app is gone
        result = self.stack.kiln('apps', 'show', name)
        self.assertEqual(result.returncode, 3, result)
        self.assertRegex(result.stderr, r'^kiln: .*not (found|deployed)')
        status, _, _ = self.stack.http('POST', '/' + name, {'a': 1})
        self.assertEqual(status, 404)
        status, _, _ = self.stack.http('GET', '/v1/apps/%s/logs' % name)
        self.assertEqual(status, 404)
        return name

    def test_run_answers_streams_logs_and_is_gone_after_ctrl_c(self):
        self.run_echo_until(signal.SIGINT)

    def test_sigterm_ends_a_run_the_same_way(self):
        first = self.run_echo_until(signal.SIGTERM)
        #  A fresh name each run
        self.assertNotEqual(first, self.run_echo_until(signal.SIGINT))

    def test_run_of_a_missing_file(self):
        for target in ('nope.py::X', '/nope/app.so'):
            result = self.stack.kiln('run', target)
            self.assertEqual(result.returncode, 1, result)
            lines = result.stderr.splitlines()
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertRegex(lines[0], r'^kiln: cannot read .*nope.*: No such file')
        #  Nothing was deployed
        result = self.stack.kiln('apps', 'list', '--json')
        self.assertEqual(result.returncode, 0, result)
        self.assertNotIn('-run-', result.stdout)


if __name__ == '__main__':
    kiln_harness.main()
