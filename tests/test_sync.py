"""Sync calls end to end: POST /{owner}/{app}[/{path}] through gateway,
Redis, broker and a runner of the echo and sleep examples."""

import json
import threading

import kiln_harness
from kiln_harness import UUID4_RE, example, wait_until

CONCURRENT_CALLS = 200


class SyncTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        cls.deploy_or_dump(example('echo'), 'local/echo')
        cls.deploy_or_dump(example('sleep'), 'local/sleep')
        #  Only test_app_started_on_demand_and_reused calls this one, so
        #  it has no runner until then.
        cls.deploy_or_dump(example('sleep'), 'local/sleepy')

    def test_echo_round_trip(self):
        status, headers, body = self.stack.http('POST', '/local/echo', {'prompt': 'rhino'})
        self.assertEqual(status, 200, body)
        self.assertTrue(headers.get('content-type', '').startswith('application/json'),
                        headers.get('content-type'))
        self.assertEqual(json.loads(body), {'path': '/', 'input': {'prompt': 'rhino'}})
        self.assertRegex(headers.get('x-fal-request-id', ''), UUID4_RE)

    def test_small_and_big_results_alike(self):
        #  A result of up to 16 KiB comes with its completion message; a
        #  bigger one is read from its record. Both come back whole, with
        #  text that is not ASCII.
        for size in (10, 16000, 17000, 40000):
            text = ('é' + 'x' * 9) * (size // 11)
            status, headers, body = self.stack.http('POST', '/local/echo', {'text': text})
            self.assertEqual(status, 200, body[:200])
            self.assertTrue(headers.get('content-type', '').startswith('application/json'))
            self.assertEqual(json.loads(body), {'path': '/', 'input': {'text': text}}, size)

    def test_subpath_endpoint(self):
        status, headers, obj = self.stack.call('/local/echo/sub', {'n': 7})
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj, {'path': '/sub', 'input': {'n': 7}})
        self.assertRegex(headers.get('x-fal-request-id', ''), UUID4_RE)

    def test_unknown_endpoint_of_a_deployed_app(self):
        status, headers, body = self.stack.http('POST', '/local/echo/nope', {})
        self.assertJsonError(status, headers, body, 404)

    def test_concurrent_calls_each_get_their_own_answer(self):
        results = [None] * CONCURRENT_CALLS
        barrier = threading.Barrier(CONCURRENT_CALLS)

        def one(i):
            payload = {'i': i, 'text': 'call-%d' % i}
            try:
                barrier.wait(timeout=30)
                results[i] = self.stack.http('POST', '/local/echo', payload, timeout=120)
            except Exception as e:      # noqa: BLE001 - reported below
                results[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENT_CALLS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        ids = set()
        for i, result in enumerate(results):
            self.assertIsInstance(result, tuple, 'call %d: %r' % (i, result))
            status, headers, body = result
            self.assertEqual(status, 200, 'call %d: %r' % (i, body[:200]))
            self.assertEqual(json.loads(body)['input'], {'i': i, 'text': 'call-%d' % i})
            ids.add(headers.get('x-fal-request-id'))
        self.assertEqual(len(ids), CONCURRENT_CALLS, 'request ids are not unique')

    def test_handler_error_passes_through(self):
        status, headers, body = self.stack.http(
            'POST', '/local/echo/fail', {'status': 418, 'detail': 'teapot'})
        obj = self.assertJsonError(status, headers, body, 418)
        self.assertEqual(obj['detail'], 'teapot')
        self.assertRegex(headers.get('x-fal-request-id', ''), UUID4_RE)

    def test_app_started_on_demand_and_reused(self):
        self.assertEqual(self.stack.runner_pids('local/sleepy'), [],
                         'a runner runs before any call')
        status, _, first = self.stack.call('/local/sleepy', {'ms': 10})
        self.assertEqual(status, 200, first)
        self.assertEqual(first['slept_ms'], 10)
        runner = first['runner']
        self.assertEqual(self.stack.runner_pids('local/sleepy'), [runner],
                         'the runner that answered is not the one process serving the app')
        status, _, second = self.stack.call('/local/sleepy', {'ms': 20})
        self.assertEqual(status, 200, second)
        self.assertEqual(second['slept_ms'], 20)
        self.assertEqual(second['runner'], runner, 'the second call started a new runner')

    def test_redeploy_replaces_the_app(self):
        status, _, obj = self.stack.call('/local/sleep', {'ms': 1})
        self.assertEqual(status, 200, obj)
        old_runner = obj['runner']
        old_revision = self._revision('local/sleep')

        new_revision = self.stack.deploy(example('sleep'), 'local/sleep')
        self.assertGreater(new_revision, old_revision)
        self.assertEqual(self._revision('local/sleep'), new_revision)

        #  Calls still work, served by a runner of the new revision; the
        #  idle runner of the old one retires.
        status, _, obj = self.stack.call('/local/sleep', {'ms': 1})
        self.assertEqual(status, 200, obj)
        self.assertNotEqual(obj['runner'], old_runner,
                            'served by the runner of the old revision')
        wait_until(lambda: old_runner not in self.stack.runner_pids('local/sleep'),
                   15, what='the old revision\'s runner to exit')

    def test_redeploy_echo_keeps_serving(self):
        before = self._revision('local/echo')
        after = self.stack.deploy(example('echo'), 'local/echo')
        self.assertEqual(after, before + 1)
        for i in range(3):
            status, _, obj = self.stack.call('/local/echo', {'after_redeploy': i})
            self.assertEqual(status, 200, obj)
            self.assertEqual(obj['input'], {'after_redeploy': i})

    def _revision(self, app):
        status, _, body = self.stack.http('GET', '/v1/apps/' + app)
        self.assertEqual(status, 200, body)
        return int(json.loads(body)['revision'])


if __name__ == '__main__':
    kiln_harness.main()
