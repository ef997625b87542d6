"""Revisions, rollback and request inspection (issue 5, items 2-3).

One app name, local/rev, deployed first with the echo example (revision
1: answers {"path", "input"}) and then with the sleep example (revision
2: answers {"slept_ms", "runner"}), so every answer shows which revision
served it. The slowlog test app (one runner at most) makes requests that
wait in the queue, run, and finish, for `kiln requests`."""

import json
import time
import uuid

import kiln_harness
from kiln_harness import app_for_tests, example, wait_until

APP = 'local/rev'
SLOWLOG = 'local/slowlog'


class RevisionsTest(kiln_harness.QueueTestCase):

    app = SLOWLOG

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        cls.first = cls.deploy_or_dump(example('echo'), APP)
        cls.second = cls.deploy_or_dump(example('sleep'), APP)
        cls.deploy_or_dump(app_for_tests('slowlog'), SLOWLOG)

    # -- helpers -------------------------------------------------------------

    def kiln_ok(self, *args, timeout=60):
        result = self.stack.kiln(*args, timeout=timeout)
        self.assertEqual(result.returncode, 0, (args, result.stdout, result.stderr))
        return result.stdout

    def kiln_fails(self, code, *args):
        """Runs kiln, expects exit `code` and one line on stderr; the line."""
        result = self.stack.kiln(*args)
        self.assertEqual(result.returncode, code, (args, result.stdout, result.stderr))
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith('kiln: '), lines[0])
        return lines[0]

    def revisions(self):
        """`kiln apps revisions APP --json`: the gateway's answer."""
        return json.loads(self.kiln_ok('apps', 'revisions', APP, '--json'))

    def served_by(self):
        """Which revision's app answers a sync call: 'echo' or 'sleep'."""
        status, _, obj = self.stack.call('/' + APP, {'ms': 1})
        self.assertEqual(status, 200, obj)
        if 'slept_ms' in obj:
            return 'sleep'
        self.assertEqual(obj, {'path': '/', 'input': {'ms': 1}})
        return 'echo'

    def show(self, request_id):
        return json.loads(self.kiln_ok('requests', 'show', request_id, '--json'))

    # -- revisions and rollback ----------------------------------------------

    def test_deploy_revisions_and_rollback(self):
        self.assertEqual((self.first, self.second), (1, 2))
        self.assertEqual(self.served_by(), 'sleep')

        #  Both revisions, newest first, 2 current
        answer = self.revisions()
        self.assertEqual([r['revision'] for r in answer['revisions']], [2, 1])
        self.assertEqual(answer['current'], 2)
        for revision in answer['revisions']:
            self.assertRegex(revision['artifact'], '^[0-9a-f]{64}$')
            self.assertIsInstance(revision['manifest'], dict)
            self.assertGreater(revision['created_ms'], 0)
        self.assertNotEqual(answer['revisions'][0]['artifact'],
                            answer['revisions'][1]['artifact'])
        table = self.kiln_ok('apps', 'revisions', APP).splitlines()
        self.assertEqual(table[0].split(), ['REVISION', 'ARTIFACT', 'CREATED', 'CURRENT'])
        self.assertEqual(table[1].split()[0], '2')
        self.assertTrue(table[1].rstrip().endswith('*'), table)
        self.assertEqual(table[1].split()[1], answer['revisions'][0]['artifact'][:12])
        self.assertEqual(table[2].split()[0], '1')
        self.assertFalse(table[2].rstrip().endswith('*'), table)

        #  A request running on revision 2 when the rollback happens
        submitted = self.submit({'ms': 1500}, app=APP)
        request_id = submitted['request_id']
        self.wait_state(request_id, 'IN_PROGRESS', app=APP)

        out = self.kiln_ok('apps', 'rollback', APP, '1')
        self.assertIn('revision 1', out)
        #  New calls go to revision 1 at once (its runner may still start)
        wait_until(lambda: self.served_by() == 'echo', 20, interval=0.1,
                   what='revision 1 (echo) to serve after the rollback')
        for _ in range(3):
            self.assertEqual(self.served_by(), 'echo')

        #  ... and the one that ran on revision 2 still finishes there
        self.wait_state(request_id, 'COMPLETED', app=APP)
        status, _, body = self.result(request_id, app=APP)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)['slept_ms'], 1500)

        answer = self.revisions()
        self.assertEqual(answer['current'], 1)
        self.assertEqual([r['revision'] for r in answer['revisions']], [2, 1])
        status, _, body = self.stack.http('GET', '/v1/apps/' + APP)
        self.assertEqual(json.loads(body)['revision'], 1)

        #  A later deploy is revision 3, never a reused number
        self.assertEqual(self.stack.deploy(example('sleep'), APP), 3)
        answer = self.revisions()
        self.assertEqual(answer['current'], 3)
        self.assertEqual([r['revision'] for r in answer['revisions']], [3, 2, 1])
        wait_until(lambda: self.served_by() == 'sleep', 20, interval=0.1,
                   what='revision 3 (sleep) to serve')

        #  Unknown revision (exit 1) and unknown app (exit 3, not found),
        #  with the gateway's reason
        line = self.kiln_fails(1, 'apps', 'rollback', APP, '99')
        self.assertIn('no revision 99', line)
        self.assertEqual(self.revisions()['current'], 3)
        line = self.kiln_fails(3, 'apps', 'rollback', 'local/nope', '1')
        self.assertIn('not deployed', line)
        line = self.kiln_fails(3, 'apps', 'revisions', 'local/nope')
        self.assertIn('not deployed', line)

    def test_rollback_http_answers(self):
        status, headers, body = self.stack.http('POST', '/v1/apps/%s/rollback' % APP,
                                                {'revision': 'one'})
        self.assertJsonError(status, headers, body, 422)
        status, headers, body = self.stack.http('POST', '/v1/apps/local/nope/rollback',
                                                {'revision': 1})
        self.assertJsonError(status, headers, body, 404)
        status, headers, body = self.stack.http('GET', '/v1/apps/local/nope/revisions')
        self.assertJsonError(status, headers, body, 404)

    def test_usage_errors(self):
        self.kiln_fails(2, 'apps', 'rollback', APP)
        self.kiln_fails(2, 'apps', 'rollback', APP, 'abc')
        self.kiln_fails(2, 'apps', 'rollback', APP, '0')
        self.kiln_fails(2, 'apps', 'revisions')
        self.kiln_fails(2, 'apps', 'revisions', 'Bad/Name')
        self.kiln_fails(2, 'requests')
        self.kiln_fails(2, 'requests', 'frob', str(uuid.uuid4()))
        self.kiln_fails(2, 'requests', 'show')
        self.kiln_fails(2, 'requests', 'show', 'not an id')
        self.kiln_fails(2, 'requests', 'cancel', str(uuid.uuid4()), '--follow')
        for args in (('apps', '--help'), ('requests', '--help'), ('help', 'requests')):
            out = self.kiln_ok(*args)
            self.assertIn('usage:', out)
        self.assertIn('rollback', self.kiln_ok('apps', '--help'))

    def test_delete_drops_the_revisions(self):
        name = 'local/gone'
        self.stack.deploy(example('echo'), name)
        self.stack.deploy(example('echo'), name)
        with self.stack.redis() as r:
            self.assertEqual(r.command('HLEN', 'kiln:app:%s:revisions' % name), 2)
        self.kiln_ok('apps', 'delete', name)
        with self.stack.redis() as r:
            self.assertEqual(r.command('EXISTS', 'kiln:app:%s:revisions' % name), 0)
        #  Deployed again, it starts over at 1
        self.assertEqual(self.stack.deploy(example('echo'), name), 1)
        self.kiln_ok('apps', 'delete', name)

    # -- kiln requests -------------------------------------------------------

    def test_requests_show_logs_cancel(self):
        running = self.hold_the_runner(lines=20, interval_ms=100)
        queued = self.submit({'lines': 2, 'interval_ms': 1})['request_id']
        later = self.submit({'lines': 2, 'interval_ms': 1})['request_id']

        #  Queued: its place in the queue, no runner; never a body
        shown = self.show(queued)
        self.assertEqual(shown['id'], queued)
        self.assertEqual(shown['app'], SLOWLOG)
        self.assertEqual(shown['path'], '/')
        self.assertEqual(shown['state'], 'IN_QUEUE')
        self.assertEqual(shown['queue_position'], 0)
        self.assertEqual(shown['priority'], 'normal')
        self.assertIsNone(shown['status'])
        self.assertIsNone(shown['runner'])
        self.assertGreater(shown['created_ms'], 0)
        self.assertEqual(shown['logs'], [])
        for field in ('body', 'result_body', 'content_type', 'reply_to'):
            self.assertNotIn(field, shown)
        self.assertEqual(self.show(later)['queue_position'], 1)
        text = self.kiln_ok('requests', 'show', queued)
        self.assertRegex(text, r'(?m)^state\s+IN_QUEUE$')
        self.assertRegex(text, r'(?m)^queue_position\s+0$')

        #  Running: its runner and start time, and its log lines so far
        shown = self.show(running)
        self.assertEqual(shown['state'], 'IN_PROGRESS')
        self.assertNotIn('queue_position', shown)
        self.assertTrue(shown['runner'])
        self.assertGreater(shown['started_ms'], 0)
        self.assertGreaterEqual(shown['attempts'], 1)

        #  Cancel the queued one: it completes 499 at once
        out = self.kiln_ok('requests', 'cancel', queued)
        self.assertIn('CANCELLATION_REQUESTED', out)
        shown = self.show(queued)
        self.assertEqual(shown['state'], 'COMPLETED')
        self.assertEqual(shown['status'], 499)
        self.assertEqual(shown['error_type'], 'client_cancelled')

        #  Follow the running one's logs to the end
        started = time.monotonic()
        out = self.kiln_ok('requests', 'logs', running, '--follow', timeout=60)
        self.assertGreater(time.monotonic() - started, 0.3)
        lines = [line for line in out.splitlines() if 'line ' in line]
        self.assertEqual(len(lines), 20, out)
        self.assertIn('line 1 of 20', lines[0])
        self.assertIn('line 20 of 20', lines[-1])
        shown = self.show(running)
        self.assertEqual(shown['state'], 'COMPLETED')
        self.assertEqual(shown['status'], 200)
        self.assertGreaterEqual(shown['completed_ms'], shown['started_ms'])
        #  Without --follow: what there is, at once
        again = self.kiln_ok('requests', 'logs', running)
        self.assertEqual(again, out)

        #  Finished: cancel is refused with the gateway's reason
        line = self.kiln_fails(1, 'requests', 'cancel', running)
        self.assertIn('already completed', line)

        #  Cancel a running one: the app stops and answers 499
        running = self.hold_the_runner(lines=200, interval_ms=100)
        out = self.kiln_ok('requests', 'cancel', running)
        self.assertIn('CANCELLATION_REQUESTED', out)
        self.wait_state(running, 'COMPLETED', timeout=20)
        self.assertEqual(self.show(running)['status'], 499)
        self.wait_completed(later)

    def test_unknown_request(self):
        unknown = str(uuid.uuid4())
        for verb in ('show', 'logs', 'cancel'):
            line = self.kiln_fails(3, 'requests', verb, unknown)
            self.assertIn('not found', line.lower())
        status, headers, body = self.stack.http('GET', '/v1/requests/' + unknown)
        self.assertJsonError(status, headers, body, 404)
        status, headers, body = self.stack.http('PUT', '/v1/requests/%s/cancel' % unknown)
        self.assertEqual(status, 404, body)


if __name__ == '__main__':
    kiln_harness.main()
