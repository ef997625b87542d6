"""An app's log stream (kiln:logs:{app}): a runner's own output (setup
prints, kiln.log outside a request, tracebacks), forwarded by its worker,
and its handlers' lines for requests, all in `kiln logs OWNER/APP` and in
GET /v1/apps/OWNER/APP/logs (paged with since); `kiln logs --follow`
prints a line logged after it started and exits 0 on SIGINT; a Python
app whose setup raises has its traceback there; unknown apps are 404 and
exit 3."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid

import kiln_harness
from kiln_harness import SOURCE_DIR, program, wait_until

BADSETUP = os.path.join(SOURCE_DIR, 'tests', 'apps', 'python', 'badsetup.py')
#  A setup marker a test can look for: written into the app's file.
SETUP_MARKER = 'setup-%s' % uuid.uuid4().hex[:12]
#  How long a line takes at most to reach the stream (worker → broker →
#  Redis) before a test gives up.
LINE_TIMEOUT_S = 30

APP_SOURCE = '''
import sys

import kiln


class Chatty(kiln.App, keep_alive=60, max_concurrency=1):
    machine_type = "CPU"

    def setup(self):
        print("%(marker)s printed by setup", flush=True)
        sys.stderr.write("%(marker)s written to stderr\\n")
        sys.stderr.flush()
        kiln.log("%(marker)s logged by setup", level="WARN")
        sys.stderr.write("%(marker)s long " + "x" * 10000 + "\\n")
        sys.stderr.flush()

    @kiln.endpoint("/")
    def run(self, request: dict) -> dict:
        kiln.log("handler says " + request.get("say", ""))
        return {"ok": True}
''' % {'marker': SETUP_MARKER}


#  An app whose process dies in setup after writing half a line: the
#  worker sends the half line at EOF, before the runner's exit.
DYING_SOURCE = '''
import os
import sys

import kiln


class Dying(kiln.App, keep_alive=60, max_concurrency=1):
    machine_type = "CPU"

    def setup(self):
        sys.stderr.write("%(marker)s last words without a newline")
        sys.stderr.flush()
        os._exit(5)

    @kiln.endpoint("/")
    def run(self) -> dict:
        return {"never": True}
''' % {'marker': SETUP_MARKER}


class AppLogsTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        cls.app_dir = tempfile.mkdtemp(prefix='kiln-test-applogs-')
        path = os.path.join(cls.app_dir, 'chatty.py')
        with open(path, 'w') as f:
            f.write(APP_SOURCE)
        cls.deploy_or_dump(path + '::Chatty', 'local/chatty')
        dying = os.path.join(cls.app_dir, 'dying.py')
        with open(dying, 'w') as f:
            f.write(DYING_SOURCE)
        cls.deploy_or_dump(dying + '::Dying', 'local/dying')
        cls.deploy_or_dump(BADSETUP + '::BadSetup', 'local/pybad')
        cls.deploy_or_dump(kiln_harness.example('echo'), 'local/echo')

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.app_dir, ignore_errors=True)
        super().tearDownClass()

    def say(self, app, text):
        """A request whose handler logs `text`; its request id."""
        status, headers, obj = self.stack.call('/' + app, {'say': text}, timeout=60)
        self.assertEqual(status, 200, obj)
        return headers['x-fal-request-id']

    def logs(self, app, query=''):
        status, _, body = self.stack.http('GET', '/v1/apps/%s/logs%s' % (app, query))
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def kiln_logs(self, *args):
        result = self.stack.kiln('logs', *args)
        self.assertEqual(result.returncode, 0, result)
        return result.stdout

    def test_setup_output_and_handler_lines_in_kiln_logs(self):
        said = 'hello-%s' % uuid.uuid4().hex[:8]
        request_id = self.say('local/chatty', said)

        def both():
            out = self.kiln_logs('local/chatty')
            return (SETUP_MARKER + ' printed by setup' in out and 'handler says ' + said in out
                    and out)
        out = wait_until(both, LINE_TIMEOUT_S, interval=0.3,
                         what='kiln logs to show the setup output and the handler line')
        lines = out.splitlines()
        #  time level [runner] message
        line_re = r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (\S+) +\[(r-[0-9a-f]{8}|-)\] (.*)$'
        for line in lines:
            self.assertRegex(line, line_re)
        handler = [l for l in lines if 'handler says ' + said in l]
        self.assertEqual(len(handler), 1, out)
        self.assertTrue(handler[0].endswith('(request %s)' % request_id), handler[0])
        self.assertEqual(re.match(line_re, handler[0]).group(1), 'INFO')
        #  What setup wrote on stderr, and its kiln.log line with its level
        self.assertIn(SETUP_MARKER + ' written to stderr', out)
        logged = [l for l in lines if SETUP_MARKER + ' logged by setup' in l]
        self.assertEqual(len(logged), 1, out)
        self.assertEqual(re.match(line_re, logged[0]).group(1), 'WARN')

        #  A line too long is cut
        long_line = [l for l in lines if SETUP_MARKER + ' long x' in l]
        self.assertEqual(len(long_line), 1, out)
        self.assertTrue(long_line[0].endswith('x [cut]'), long_line[0][-40:])
        self.assertLess(len(long_line[0]), 4200)

        #  --json: one object a line, as the gateway gives them
        objects = [json.loads(l) for l in self.kiln_logs('local/chatty', '--json').splitlines()]
        mine = [o for o in objects if o['message'] == 'handler says ' + said]
        self.assertEqual(len(mine), 1, objects)
        self.assertEqual(mine[0]['request_id'], request_id)
        self.assertEqual(mine[0]['source'], 'app')
        self.assertRegex(mine[0]['runner_id'], r'^r-')
        setup = [o for o in objects if o['message'] == SETUP_MARKER + ' printed by setup']
        self.assertEqual(len(setup), 1, objects)
        self.assertEqual(setup[0]['source'], 'runner')
        self.assertNotIn('request_id', setup[0])
        self.assertEqual(setup[0]['revision'], 1)

        #  --limit: the last N
        self.assertEqual(len(self.kiln_logs('local/chatty', '--limit', '1').splitlines()), 1)

    def test_api_pages_with_since(self):
        for i in range(3):
            self.say('local/echo', 'page-%d' % i)
        wait_until(lambda: len(self.logs('local/echo', '?limit=1000')['logs']) >= 6,
                   LINE_TIMEOUT_S, interval=0.3, what='the echo lines in the stream')
        everything = self.logs('local/echo', '?limit=1000')
        ids = [line['id'] for line in everything['logs']]
        self.assertEqual(everything['next'], ids[-1])
        for line in everything['logs']:
            self.assertRegex(line['timestamp'], r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$')
            self.assertIn(line['level'], ('DEBUG', 'INFO', 'WARN', 'ERROR', 'STDOUT', 'STDERR'))
            self.assertIn(line['source'], ('app', 'runner'))
        #  One at a time from the start, with since = the last next
        paged, since = [], '0-0'
        while True:
            page = self.logs('local/echo', '?since=%s&limit=1' % since)
            if not page['logs']:
                self.assertEqual(page['next'], since)
                break
            self.assertEqual(len(page['logs']), 1)
            paged.append(page['logs'][0]['id'])
            since = page['next']
        self.assertEqual(paged[:len(ids)], ids)
        #  Without since: the last `limit`, oldest first
        last_two = self.logs('local/echo', '?limit=2')['logs']
        self.assertEqual([l['id'] for l in last_two], paged[-2:])

        #  Bad queries and unknown apps
        for query in ('?since=abc', '?since=1-2-3', '?limit=0', '?limit=1001', '?limit=x'):
            status, headers, body = self.stack.http('GET', '/v1/apps/local/echo/logs' + query)
            self.assertJsonError(status, headers, body, 400, 'bad_request')
        status, headers, body = self.stack.http('GET', '/v1/apps/local/nope/logs')
        self.assertJsonError(status, headers, body, 404, 'not_found')
        status, headers, body = self.stack.http('POST', '/v1/apps/local/echo/logs')
        self.assertJsonError(status, headers, body, 405)

    def test_follow_prints_new_lines_and_stops_on_sigint(self):
        self.say('local/chatty', 'before')
        proc = subprocess.Popen([program('kiln'), 'logs', 'local/chatty', '--follow'],
                                env=self.stack.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines = []

        def read():
            for line in proc.stdout:
                lines.append(line)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            wait_until(lambda: lines, LINE_TIMEOUT_S, what='kiln logs --follow to print')
            said = 'after-%s' % uuid.uuid4().hex[:8]
            self.say('local/chatty', said)
            wait_until(lambda: any('handler says ' + said in l for l in list(lines)),
                       LINE_TIMEOUT_S, interval=0.1,
                       what='kiln logs --follow to print the new line %r' % said)
            proc.send_signal(signal.SIGINT)
            self.assertEqual(proc.wait(15), 0, proc.stderr.read())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(5)
            proc.stdout.close()
            proc.stderr.close()

    def test_setup_traceback_in_the_app_logs(self):
        #  A call makes the broker start a runner; its setup raises.
        status, _, obj = self.stack.queue_submit('/local/pybad', {})
        self.assertEqual(status, 200, obj)

        def traceback():
            out = self.kiln_logs('local/pybad')
            return ('Traceback (most recent call last)' in out
                    and 'RuntimeError: the model weights are missing' in out and out)
        out = wait_until(traceback, 60, interval=0.5, what='the setup traceback in kiln logs')
        first = [l for l in out.splitlines() if 'Traceback (most recent call last)' in l][0]
        self.assertRegex(first, r' ERROR +\[r-')

    def test_last_words_of_a_dying_process(self):
        status, _, obj = self.stack.queue_submit('/local/dying', {})
        self.assertEqual(status, 200, obj)
        wait_until(lambda: SETUP_MARKER + ' last words without a newline'
                   in self.kiln_logs('local/dying'),
                   60, interval=0.5, what='the half line of a dying process in kiln logs')

    def test_unknown_app(self):
        for args in (['local/nope'], ['local/nope', '--follow']):
            result = self.stack.kiln('logs', *args)
            self.assertEqual(result.returncode, 3, result)
            lines = result.stderr.splitlines()
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertRegex(lines[0], r'^kiln: .*local/nope.*not (found|deployed)')
        for args in (['Bad'], [], ['local/echo', 'extra'], ['local/echo', '--limit', '0']):
            result = self.stack.kiln('logs', *args)
            self.assertEqual(result.returncode, 2, result)


if __name__ == '__main__':
    kiln_harness.main()
