"""API keys, tenants and private/shared/public apps (issue 7, items 1-3).

One stack with KILN_AUTH=required. The operator's key is made with the
real CLI straight into Redis (`kiln keys create --redis`), every other key
through the API. Apps: alice/echo (private, deployed with the CLI),
alice/shr (shared), alice/pub (public) and bob/echo (private), the last
three deployed through POST /v1/apps with the first one's artifact.

Owners: alice (the apps' owner), bob and carol (others). What a key may
not see answers 404 with the body of a thing that does not exist; the
tests compare the bytes (with the name or id swapped for the unknown
one's, since the detail names it)."""

import json
import time
import unittest
import uuid

import kiln_harness
from kiln_harness import example, wait_until

#  How long a revocation may take to reach every gateway (the key cache's
#  lifetime is 2 s), plus a margin for a busy machine.
REVOKE_WITHIN_S = 3.5


def key_header(key):
    return {'Authorization': 'Key ' + key} if key else {}


class AuthTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        stack = kiln_harness.Stack(name='auth', env={'KILN_AUTH': 'required'})
        cls.stack = stack
        try:
            stack.start_redis()
            made = stack.kiln('keys', 'create', '--redis', stack.env['KILN_REDIS_URL'],
                              '--scope', 'ADMIN', '--owner', '*')
            if made.returncode != 0:
                raise AssertionError('kiln keys create --redis failed: %s' % made.stderr)
            cls.root = made.stdout.strip()
            cls.root_stderr = made.stderr
            stack.env['KILN_KEY'] = cls.root
            stack.start_broker()
            stack.start_gateway()
            stack.start_worker()
            stack.deploy(example('echo'), 'alice/echo')
            status, _, body = cls.as_key(cls.root, 'GET', '/v1/apps/alice/echo')
            assert status == 200, (status, body)
            app = json.loads(body)
            manifest = app['manifest']
            if isinstance(manifest, str):
                manifest = json.loads(manifest)
            cls.artifact = app['artifact']
            for name, app_auth in (('alice/shr', 'shared'), ('alice/pub', 'public'),
                                   ('bob/echo', 'private')):
                manifest = dict(manifest, app_auth=app_auth)
                status, _, body = cls.as_key(cls.root, 'POST', '/v1/apps', {
                    'name': name, 'artifact': cls.artifact, 'manifest': manifest})
                assert status == 201, (name, status, body)
            cls.keys = {}
            for owner, scope in (('alice', 'API'), ('alice', 'ADMIN'), ('bob', 'API'),
                                 ('bob', 'ADMIN'), ('carol', 'API')):
                status, _, body = cls.as_key(cls.root, 'POST', '/v1/keys',
                                             {'scope': scope, 'owner': owner})
                assert status == 201, (owner, scope, status, body)
                cls.keys[owner, scope] = json.loads(body)
            cls.alice = cls.keys['alice', 'API']['key']
            cls.alice_admin = cls.keys['alice', 'ADMIN']['key']
            cls.bob = cls.keys['bob', 'API']['key']
            cls.bob_admin = cls.keys['bob', 'ADMIN']['key']
            cls.carol = cls.keys['carol', 'API']['key']
            #  Every app has a runner before the tests time anything
            for app in ('alice/echo', 'alice/shr', 'alice/pub', 'bob/echo'):
                wait_until(lambda: cls.as_key(cls.root, 'POST', '/' + app, {'warm': 1})[0] == 200,
                           60, what='%s to answer' % app)
        except BaseException:
            stack.dump_logs()
            stack.close()
            cls.stack = None
            raise

    @classmethod
    def as_key(cls, key, method, path, body=None, headers=None):
        headers = dict(headers or {}, **key_header(key))
        return cls.stack.http(method, path, body, headers=headers, timeout=30)

    # -- helpers ---------------------------------------------------------

    def submit(self, key, app, payload=None):
        status, _, body = self.as_key(key, 'POST', '/queue/' + app, payload or {'q': 1})
        self.assertEqual(status, 200, body)
        return json.loads(body)['request_id']

    def wait_done(self, key, app, request_id):
        def done():
            status, _, body = self.as_key(
                key, 'GET', '/queue/%s/requests/%s/status' % (app, request_id))
            return status == 200 and json.loads(body)['status'] == 'COMPLETED'
        wait_until(done, 30, what='request %s to complete' % request_id)

    def assert_unauthorized(self, answer, what):
        status, headers, body = answer
        self.assertEqual(status, 401, (what, body))
        self.assertEqual(headers.get('www-authenticate'), 'Key', what)
        self.assertEqual(json.loads(body)['error_type'], 'unauthorized', (what, body))

    def assert_same_as_missing(self, hidden, missing, hidden_name, missing_name, what):
        """hidden (an answer for something the key may not see) is byte
        for byte the answer for something that does not exist, but for
        the name in the detail."""
        self.assertEqual(hidden[0], 404, (what, hidden[2]))
        self.assertEqual(missing[0], 404, (what, missing[2]))
        self.assertEqual(hidden[1].get('content-type'), missing[1].get('content-type'), what)
        self.assertEqual(set(hidden[1]) - {'date'}, set(missing[1]) - {'date'}, what)
        self.assertEqual(hidden[2].replace(hidden_name.encode(), missing_name.encode()),
                         missing[2], what)

    def request_routes(self, app, request_id):
        base = '/queue/%s/requests/%s' % (app, request_id)
        return [('GET', base + '/status'), ('GET', base), ('PUT', base + '/cancel'),
                ('GET', base + '/status/stream'), ('GET', '/v1/requests/' + request_id)]

    # -- no key, a bad key -----------------------------------------------

    def test_open_routes(self):
        self.assertEqual(self.stack.http('GET', '/health')[0], 200)
        status, _, body = self.stack.http('GET', '/.well-known/jwks.json')
        self.assertNotEqual(status, 401, body)

    def test_every_route_class_without_a_key(self):
        request_id = self.submit(self.alice, 'alice/echo')
        sha = self.artifact
        routes = [('POST', '/alice/echo', {}), ('POST', '/queue/alice/echo', {}),
                  ('POST', '/alice/shr', {}), ('POST', '/alice/nope', {}),
                  ('GET', '/v1/apps', None), ('POST', '/v1/apps', {'name': 'alice/x'}),
                  ('GET', '/v1/apps/alice/echo', None), ('DELETE', '/v1/apps/alice/echo', None),
                  ('PATCH', '/v1/apps/alice/echo', {'max_concurrency': 3}),
                  ('GET', '/v1/apps/alice/echo/revisions', None),
                  ('PUT', '/v1/artifacts/' + sha, 'x'), ('GET', '/v1/runners', None),
                  ('GET', '/v1/workers', None), ('GET', '/v1/keys', None),
                  ('POST', '/v1/keys', {'scope': 'API'}), ('GET', '/metrics', None)]
        routes += [(m, p, None) for m, p in self.request_routes('alice/echo', request_id)]
        for method, path, body in routes:
            self.assert_unauthorized(self.stack.http(method, path, body), (method, path))
        #  Still there, untouched
        self.assertEqual(self.as_key(self.root, 'GET', '/v1/apps/alice/echo')[0], 200)

    def test_malformed_wrong_and_unknown_keys(self):
        alice_id = self.keys['alice', 'API']['id']
        bad = ['Bearer ' + self.alice, 'Key', 'Key nocolon', 'Key %s:short' % alice_id,
               'Key %s' % alice_id, 'Basic YWxpY2U6c2VjcmV0']
        for header in bad:
            answer = self.stack.http('POST', '/alice/echo', {}, headers={'Authorization': header})
            self.assert_unauthorized(answer, header)
        wrong = '%s:%s' % (alice_id, '0' * 64)
        unknown = '%s:%s' % (uuid.uuid4(), self.alice.split(':')[1])
        for key in (wrong, unknown):
            self.assert_unauthorized(self.as_key(key, 'POST', '/alice/echo', {}), key)
            self.assert_unauthorized(self.as_key(key, 'GET', '/v1/apps'), key)
            #  A public app takes no key, but a key given must be valid
            self.assert_unauthorized(self.as_key(key, 'POST', '/alice/pub', {}), key)

    def test_revoked_key_stops_within_two_seconds(self):
        status, _, body = self.as_key(self.alice_admin, 'POST', '/v1/keys', {'scope': 'API'})
        self.assertEqual(status, 201, body)
        made = json.loads(body)
        self.assertEqual(made['owner'], 'alice')
        self.assertEqual(self.as_key(made['key'], 'POST', '/alice/echo', {'a': 1})[0], 200)
        revoked = self.stack.kiln('keys', 'revoke', made['id'], '--key', self.alice_admin)
        self.assertEqual(revoked.returncode, 0, revoked.stderr)
        started = time.monotonic()
        wait_until(lambda: self.as_key(made['key'], 'POST', '/alice/echo', {})[0] == 401,
                   REVOKE_WITHIN_S, what='the revoked key to be refused')
        self.assertLess(time.monotonic() - started, REVOKE_WITHIN_S)
        self.assert_unauthorized(self.as_key(made['key'], 'POST', '/alice/echo', {}), 'revoked')
        listed = json.loads(self.as_key(self.alice_admin, 'GET', '/v1/keys')[2])
        mine = [k for k in listed if k['id'] == made['id']]
        self.assertEqual(len(mine), 1)
        self.assertTrue(mine[0]['revoked'])

    # -- scopes ----------------------------------------------------------

    def test_api_scope_may_not_manage(self):
        for method, path, body in [('GET', '/v1/apps', None), ('GET', '/v1/runners', None),
                                   ('GET', '/v1/apps/alice/echo', None),
                                   ('POST', '/v1/keys', {'scope': 'API'}),
                                   ('GET', '/v1/keys', None)]:
            status, _, data = self.as_key(self.alice, method, path, body)
            self.assertEqual(status, 403, (path, data))
            self.assertEqual(json.loads(data)['error_type'], 'forbidden')
        result = self.stack.kiln('apps', 'list', '--key', self.alice)
        self.assertNotEqual(result.returncode, 0)

    def test_owner_admin_sees_its_own_only(self):
        status, _, body = self.as_key(self.alice_admin, 'GET', '/v1/apps')
        self.assertEqual(status, 200, body)
        names = sorted(a['name'] for a in json.loads(body)['apps'])
        self.assertEqual(names, ['alice/echo', 'alice/pub', 'alice/shr'])
        names = sorted(a['name'] for a in json.loads(
            self.as_key(self.root, 'GET', '/v1/apps')[2])['apps'])
        self.assertIn('bob/echo', names)
        runners = json.loads(self.as_key(self.alice_admin, 'GET', '/v1/runners')[2])['runners']
        self.assertTrue(runners)
        self.assertTrue(all(r['app'].startswith('alice/') for r in runners), runners)
        #  Another owner's app, as if it did not exist
        for method, path, body in [('GET', '/v1/apps/bob/echo', None),
                                   ('DELETE', '/v1/apps/bob/echo', None),
                                   ('PATCH', '/v1/apps/bob/echo', {'max_concurrency': 2}),
                                   ('GET', '/v1/apps/bob/echo/revisions', None),
                                   ('POST', '/v1/apps/bob/echo/rollback', {'revision': 1}),
                                   ('GET', '/v1/apps/bob/echo/logs', None)]:
            hidden = self.as_key(self.alice_admin, method, path, body)
            missing = self.as_key(self.alice_admin, method, path.replace('bob/echo', 'alice/nope'),
                                  body)
            self.assert_same_as_missing(hidden, missing, 'bob/echo', 'alice/nope', path)
        self.assertEqual(self.as_key(self.root, 'GET', '/v1/apps/bob/echo')[0], 200)
        #  Deploying under another owner's name, and the workers: refused
        status, _, body = self.as_key(self.alice_admin, 'POST', '/v1/apps', {
            'name': 'bob/evil', 'artifact': self.artifact, 'manifest': {'name': 'x',
                                                                        'endpoints': ['/']}})
        self.assertEqual(status, 403, body)
        self.assertEqual(self.as_key(self.alice_admin, 'GET', '/v1/workers')[0], 403)
        self.assertEqual(self.as_key(self.alice_admin, 'GET', '/metrics')[0], 403)
        self.assertEqual(self.as_key(self.root, 'GET', '/v1/workers')[0], 200)
        self.assertEqual(self.as_key(self.root, 'GET', '/metrics')[0], 200)
        #  The CLI with an owner's ADMIN key
        result = self.stack.kiln('apps', 'list', '--key', self.alice_admin)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn('alice/echo', result.stdout)
        self.assertNotIn('bob/echo', result.stdout)

    # -- tenants: private, shared, public ----------------------------------

    def test_private_app_is_the_owners(self):
        status, headers, body = self.as_key(self.alice, 'POST', '/alice/echo', {'a': 1})
        self.assertEqual(status, 200, body)
        self.assertEqual(self.as_key(self.root, 'POST', '/alice/echo', {'a': 1})[0], 200)
        for key in (self.bob, self.bob_admin, self.carol):
            for prefix in ('/', '/queue/'):
                hidden = self.as_key(key, 'POST', prefix + 'alice/echo', {'a': 1})
                #  What the owner hears of an app that does not exist
                missing = self.as_key(self.alice, 'POST', prefix + 'alice/nope', {'a': 1})
                self.assert_same_as_missing(hidden, missing, 'alice/echo', 'alice/nope', prefix)
        #  Its requests: alice's and the operator's; others get "not found"
        request_id = self.submit(self.alice, 'alice/echo', {'mine': 1})
        self.wait_done(self.alice, 'alice/echo', request_id)
        status, _, body = self.as_key(self.alice, 'GET',
                                      '/queue/alice/echo/requests/%s' % request_id)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)['input'], {'mine': 1})
        self.assertEqual(self.as_key(self.root, 'GET', '/v1/requests/' + request_id)[0], 200)
        self.assertEqual(self.as_key(self.alice_admin, 'GET', '/v1/requests/' + request_id)[0],
                         200)
        unknown = str(uuid.uuid4())
        for key in (self.bob, self.bob_admin, self.carol):
            for (method, path), (_, missing_path) in zip(
                    self.request_routes('alice/echo', request_id),
                    self.request_routes('alice/echo', unknown)):
                if path.startswith('/v1/') and key != self.bob_admin:
                    continue            #  an API key gets 403 there
                hidden = self.as_key(key, method, path)
                #  What the owner (the operator on /v1) hears of a request
                #  that does not exist
                owner = self.root if path.startswith('/v1/') else self.alice
                missing = self.as_key(owner, method, missing_path)
                self.assert_same_as_missing(hidden, missing, request_id, unknown, path)

    def test_shared_app_and_its_requests(self):
        status, _, body = self.as_key(self.bob, 'POST', '/alice/shr', {'b': 1})
        self.assertEqual(status, 200, body)
        self.assert_unauthorized(self.stack.http('POST', '/alice/shr', {}), 'shared, no key')
        request_id = self.submit(self.bob, 'alice/shr', {'from': 'bob'})
        self.wait_done(self.bob, 'alice/shr', request_id)
        #  The caller and the app's owner read it ...
        for key in (self.bob, self.alice, self.root):
            status, _, body = self.as_key(key, 'GET', '/queue/alice/shr/requests/' + request_id)
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)['input'], {'from': 'bob'})
        self.assertEqual(self.as_key(self.bob_admin, 'GET', '/v1/requests/' + request_id)[0], 200)
        #  ... a third owner does not
        unknown = str(uuid.uuid4())
        for (method, path), (_, missing_path) in zip(
                self.request_routes('alice/shr', request_id)[:4],
                self.request_routes('alice/shr', unknown)[:4]):
            hidden = self.as_key(self.carol, method, path)
            missing = self.as_key(self.alice, method, missing_path)
            self.assert_same_as_missing(hidden, missing, request_id, unknown, path)
        self.assert_unauthorized(self.stack.http(
            'GET', '/queue/alice/shr/requests/%s/status' % request_id), 'no key')

    def test_public_app_without_a_key(self):
        status, _, body = self.stack.http('POST', '/alice/pub', {'p': 1})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)['input'], {'p': 1})
        status, _, body = self.stack.http('POST', '/queue/alice/pub', {'p': 2})
        self.assertEqual(status, 200, body)
        request_id = json.loads(body)['request_id']
        self.wait_done(None, 'alice/pub', request_id)
        status, _, body = self.stack.http('GET', '/queue/alice/pub/requests/' + request_id)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)['input'], {'p': 2})
        #  Any valid key may call it too; the management API stays closed
        self.assertEqual(self.as_key(self.carol, 'POST', '/alice/pub', {})[0], 200)
        self.assert_unauthorized(self.stack.http('GET', '/v1/apps/alice/pub'), 'v1')

    def test_native_app_deployed_with_auth_public(self):
        #  A native app's descriptor has no app_auth: kiln deploy --auth
        #  sets it (an owner no test lists, so the others see no change)
        app = 'dave/pubcli'
        result = self.stack.kiln('deploy', example('echo'), '--name', app, '--auth', 'public')
        self.assertEqual(result.returncode, 0, result.stderr)
        manifest = json.loads(self.as_key(self.root, 'GET', '/v1/apps/' + app)[2])['manifest']
        if isinstance(manifest, str):
            manifest = json.loads(manifest)
        self.assertEqual(manifest['app_auth'], 'public')
        wait_until(lambda: self.stack.http('POST', '/' + app, {'d': 1})[0] == 200, 60,
                   what='%s to answer without a key' % app)
        status, _, body = self.stack.http('POST', '/' + app, {'d': 2})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)['input'], {'d': 2})
        self.assert_unauthorized(self.stack.http('GET', '/v1/apps/' + app), 'v1')
        #  A bad value is a usage error, said in one line, before anything is sent
        for args in (('--auth', 'open'), ('--auth', ''), ('--max-queue-length', '-1'),
                     ('--max-queue-length', 'ten'), ('--max-queue-length', '1e3')):
            for command in (('deploy', '--name', 'dave/bad'), ('run',)):
                result = self.stack.kiln(command[0], example('echo'), *(command[1:] + args))
                self.assertEqual(result.returncode, 2, (command, args, result.stderr))
                self.assertEqual(result.stderr.count('\n'), 1, result.stderr)
                self.assertIn(args[0], result.stderr)
        self.assertEqual(self.as_key(self.root, 'GET', '/v1/apps/dave/bad')[0], 404)

    # -- keys ------------------------------------------------------------

    def test_key_management_rules(self):
        status, _, body = self.as_key(self.alice_admin, 'POST', '/v1/keys',
                                      {'scope': 'API', 'owner': 'bob'})
        self.assertEqual(status, 403, body)
        status, _, body = self.as_key(self.alice_admin, 'POST', '/v1/keys',
                                      {'scope': 'ADMIN', 'owner': '*'})
        self.assertEqual(status, 403, body)
        status, _, body = self.as_key(self.root, 'POST', '/v1/keys',
                                      {'scope': 'API', 'owner': '*'})
        self.assertEqual(status, 400, body)
        status, _, body = self.as_key(self.root, 'POST', '/v1/keys', {'scope': 'ROOT'})
        self.assertEqual(status, 400, body)
        listed = json.loads(self.as_key(self.alice_admin, 'GET', '/v1/keys')[2])
        self.assertTrue(listed)
        self.assertEqual({k['owner'] for k in listed}, {'alice'})
        owners = {k['owner'] for k in json.loads(self.as_key(self.root, 'GET', '/v1/keys')[2])}
        self.assertTrue({'*', 'alice', 'bob', 'carol'} <= owners, owners)
        #  Another owner's key: not found, and not revoked
        bob_id = self.keys['bob', 'API']['id']
        status, _, body = self.as_key(self.alice_admin, 'DELETE', '/v1/keys/' + bob_id)
        self.assertEqual(status, 404, body)
        self.assertEqual(self.as_key(self.bob, 'POST', '/alice/shr', {})[0], 200)
        #  The CLI: create prints the key once, on stdout alone
        made = self.stack.kiln('keys', 'create', '--scope', 'API', '--key', self.alice_admin)
        self.assertEqual(made.returncode, 0, made.stderr)
        key = made.stdout.strip()
        self.assertRegex(key, r'^[0-9a-f-]{36}:[0-9a-f]{64}$')
        self.assertIn('only time', made.stderr)
        self.assertEqual(self.as_key(key, 'POST', '/alice/echo', {})[0], 200)
        listed = self.stack.kiln('keys', 'list', '--key', self.alice_admin)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn(key.split(':')[0], listed.stdout)

    def test_secrets_are_never_stored_or_shown(self):
        secrets = [k['secret'] for k in self.keys.values()] + [self.root.split(':')[1]]
        self.assertIn('only time', self.root_stderr)
        shown = self.as_key(self.root, 'GET', '/v1/keys')[2].decode()
        listed = self.stack.kiln('keys', 'list', '--json')
        self.assertEqual(listed.returncode, 0, listed.stderr)
        table = self.stack.kiln('keys', 'list')
        for secret in secrets:
            self.assertNotIn(secret, shown)
            self.assertNotIn(secret, listed.stdout)
            self.assertNotIn(secret, table.stdout)
        for item in json.loads(listed.stdout):
            self.assertEqual(set(item) - {'revoked_ms'},
                             {'id', 'scope', 'owner', 'created_ms', 'revoked'})
        with self.stack.redis() as redis:
            stored = redis.scan_keys('kiln:apikey:*')
            self.assertGreaterEqual(len(stored), len(secrets))
            for name in stored:
                record = redis.hgetall(name)
                self.assertEqual(set(record) - {'revoked_ms'},
                                 {'id', 'scope', 'owner', 'salt', 'hash', 'created_ms'})
                for secret in secrets:
                    self.assertNotIn(secret, ''.join(record.values()))
        for process in ('gateway', 'broker', 'worker'):
            with open(self.stack.log_path(process), errors='replace') as log:
                text = log.read()
            for secret in secrets:
                self.assertNotIn(secret, text, process)


    # -- KILN_AUTH modes ---------------------------------------------------

    def extra_gateway(self, name, addr, mode):
        """Another gateway on this stack's Redis: (process, port, log path)."""
        port = kiln_harness.free_port()
        env = dict(self.stack.env, KILN_HTTP_ADDR='%s:%d' % (addr, port),
                   KILN_PUBLIC_URL='http://127.0.0.1:%d' % port)
        if mode:
            env['KILN_AUTH'] = mode
        else:
            env.pop('KILN_AUTH', None)
        log_path = self.stack.log_path(name)
        proc = kiln_harness.spawn([kiln_harness.program('kiln-gateway')], env, log_path)
        self.addCleanup(kiln_harness.stop_process, proc)
        wait_until(lambda: kiln_harness.http_request(port, 'GET', '/health', timeout=2)[0] == 200,
                   15, what='%s to answer /health' % name)
        return proc, port, log_path

    def test_modes(self):
        #  auto on every address: keys required
        _, port, _ = self.extra_gateway('gateway-auto-any', '0.0.0.0', None)
        status, headers, body = kiln_harness.http_request(port, 'GET', '/v1/apps')
        self.assertEqual(status, 401, body)
        #  auto on loopback: open, as before keys
        _, port, log_path = self.extra_gateway('gateway-auto-lo', '127.0.0.1', None)
        self.assertEqual(kiln_harness.http_request(port, 'GET', '/v1/apps')[0], 200)
        with open(log_path) as log:
            self.assertNotIn('WARNING', log.read())
        #  off on every address: open, and the log says so loudly
        _, port, log_path = self.extra_gateway('gateway-off-any', '0.0.0.0', 'off')
        self.assertEqual(kiln_harness.http_request(port, 'GET', '/v1/apps')[0], 200)
        with open(log_path) as log:
            self.assertRegex(log.read(), r'WARNING.*API keys are OFF.*anyone who can reach')
        #  A mode that is not one stops the gateway
        env = dict(self.stack.env, KILN_AUTH='maybe')
        result = kiln_harness.subprocess.run([kiln_harness.program('kiln-gateway')], env=env,
                                             capture_output=True, text=True, timeout=30)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn('KILN_AUTH', result.stderr)


if __name__ == '__main__':
    unittest.main()
