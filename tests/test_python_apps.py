"""Python apps end to end (docs/PROCESS_APPS.md): `kiln deploy FILE.py::Class`
uploads a bundle, a worker unpacks it, a runner starts `python3 -m
kiln.serve` as its child and serves it, with setup state, logs, stored
files, errors, a failed setup and a process that dies mid-request."""

import json
import os
import re
import threading

import kiln_harness
from kiln_harness import SOURCE_DIR, wait_until

HELLO = os.path.join(SOURCE_DIR, 'examples', 'python', 'hello.py')
APPS = os.path.join(SOURCE_DIR, 'tests', 'apps', 'python')
#  A failed setup ends its call once the broker gives up starting it.
SETUP_FAILURE_TIMEOUT_S = 90


def test_app(name, class_name):
    return '%s::%s' % (os.path.join(APPS, name + '.py'), class_name)


class PythonAppsTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        cls.deploy_or_dump(HELLO + '::Hello', 'local/hello')
        cls.deploy_or_dump(test_app('raising', 'Raising'), 'local/raising')
        cls.deploy_or_dump(test_app('badsetup', 'BadSetup'), 'local/pybadsetup')
        cls.deploy_or_dump(test_app('needs', 'Needs'), 'local/needs')

    def test_sync_call_uses_setup_state_and_stores_a_file(self):
        status, _, obj = self.stack.call('/local/hello', {'name': 'kiln', 'excited': True})
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['greeting'], 'Hello, kiln!')     # the template setup() made
        self.assertGreaterEqual(obj['served'], 1)
        badge = obj['badge']
        self.assertEqual(badge['content_type'], 'image/png')
        self.assertEqual((badge['width'], badge['height']), (8, 8))
        path = re.sub(r'^https?://[^/]+', '', badge['url'])
        status, headers, data = self.stack.http('GET', path)
        self.assertEqual(status, 200)
        self.assertTrue(data.startswith(b'\x89PNG'), data[:8])
        self.assertEqual(len(data), badge['file_size'])

    def test_concurrent_calls_interleave_on_one_process(self):
        #  max_multiplexing=2, max_concurrency=2: calls at once all answer.
        results = [None] * 6

        def one(i):
            results[i] = self.stack.call('/local/hello', {'name': 'n%d' % i}, timeout=60)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        for i, (status, _, obj) in enumerate(results):
            self.assertEqual(status, 200, obj)
            self.assertEqual(obj['greeting'], 'Hello, n%d.' % i)

    def test_queue_call_shows_the_app_log_line(self):
        status, _, obj = self.stack.queue_submit('/local/hello', {'name': 'queue'})
        self.assertIn(status, (200, 202), obj)
        final = self.stack.wait_state('local/hello', obj['request_id'], 'COMPLETED',
                                      timeout=60, logs=True)
        messages = [line.get('message', '') for line in final.get('logs') or []]
        self.assertTrue(any('greeting queue' in m for m in messages), final)

    def test_manifest_is_python_with_requirements(self):
        result = self.stack.kiln('apps', 'show', 'local/needs', '--json')
        self.assertEqual(result.returncode, 0, result.stderr)
        manifest = json.loads(result.stdout)['manifest']
        if isinstance(manifest, str):
            manifest = json.loads(manifest)
        self.assertEqual(manifest['kind'], 'python')
        self.assertEqual(manifest['requirements'], ['some-package==1.0'])

    def test_raising_endpoint_is_500_and_the_next_call_works(self):
        status, headers, body = self.stack.http('POST', '/local/raising', {'fail': True}, timeout=60)
        obj = self.assertJsonError(status, headers, body, 500, 'runner_server_error')
        self.assertIn('asked to fail', obj['detail'])
        status, _, obj = self.stack.call('/local/raising', {})
        self.assertEqual(status, 200, obj)
        self.assertTrue(obj['ok'])

    def test_process_exit_mid_request_is_a_runner_crash(self):
        status, _, obj = self.stack.call('/local/raising', {})
        self.assertEqual(status, 200, obj)
        status, headers, body = self.stack.http('POST', '/local/raising', {'exit': True}, timeout=60)
        self.assertJsonError(status, headers, body, 503, 'runner_disconnected')
        status, _, after = self.stack.call('/local/raising', {}, timeout=60)
        self.assertEqual(status, 200, after)
        self.assertNotEqual(after['pid'], obj['pid'])
        self.assertTrue(self.stack.running('worker'))

    def check_setup_failure(self, app, text):
        status, headers, body = self.stack.http('POST', '/' + app, {},
                                                timeout=SETUP_FAILURE_TIMEOUT_S)
        self.assertGreaterEqual(status, 500, body)
        self.assertLess(status, 600, body)
        obj = json.loads(body)
        self.assertIsInstance(obj.get('detail'), str, obj)

        def shown():
            result = self.stack.kiln('apps', 'show', app, '--json')
            return text in result.stdout and result
        wait_until(shown, 30, what='kiln apps show %s to show %r' % (app, text))

    def test_setup_failure_ends_the_call_and_shows_the_error(self):
        self.check_setup_failure('local/pybadsetup', 'the model weights are missing')

    # -- CLI errors ------------------------------------------------------

    def deploy_fails(self, target, text):
        result = self.stack.kiln('deploy', target, '--name', 'local/bad')
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(text, lines[0])

    def test_deploy_no_such_file(self):
        self.deploy_fails(os.path.join(APPS, 'missing.py') + '::Missing', 'missing.py')

    def test_deploy_without_a_class(self):
        self.deploy_fails(os.path.join(APPS, 'raising.py'), '::ClassName')

    def test_deploy_a_class_that_is_not_an_app(self):
        self.deploy_fails(test_app('notapp', 'NotAnApp'), 'not a kiln.App')

    def test_deploy_an_unknown_class(self):
        self.deploy_fails(test_app('raising', 'Nope'), 'Nope')


if __name__ == '__main__':
    kiln_harness.main()
