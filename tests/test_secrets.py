"""App secrets (docs/SECURITY.md, Secrets): `kiln secrets set OWNER/APP
NAME=VALUE` reaches that app's runners as an environment variable (a
Python app's child process inherits it), never another app's; the value
appears in no API answer, CLI output or process log; names are checked;
deleting the app deletes its secrets."""

import hashlib
import json
import os
import uuid

import kiln_harness
from kiln_harness import SOURCE_DIR, proc_environ, wait_until

APP = os.path.join(SOURCE_DIR, 'tests', 'apps', 'python', 'secretive.py') + '::Secretive'
#  A Python runner's first start (unpack, interpreter) on a busy machine.
CALL_TIMEOUT_S = 90


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def tcp_peer_ports(pid):
    """The remote ports of the TCP connections the process holds."""
    inodes = set()
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            link = os.readlink('/proc/%d/fd/%s' % (pid, fd))
        except OSError:
            continue
        if link.startswith('socket:['):
            inodes.add(link[len('socket:['):-1])
    ports = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[2].rsplit(':', 1)[1], 16))
    return ports


class SecretsTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        #  A value no test sends anywhere but through `kiln secrets set`
        cls.value = 'v-' + uuid.uuid4().hex
        cls.deploy_or_dump(APP, 'local/sec-a')
        cls.deploy_or_dump(APP, 'local/sec-b')
        result = cls.stack.kiln('secrets', 'set', 'local/sec-a', 'MY_SECRET=' + cls.value,
                                'OTHER_ONE=x=y')
        if result.returncode != 0:
            cls.stack.dump_logs()
            raise AssertionError('kiln secrets set failed: %s%s' % (result.stdout, result.stderr))
        cls.set_output = result.stdout + result.stderr

    def check(self, app, name='MY_SECRET', value=None):
        status, _, obj = self.stack.call('/' + app, {'name': name,
                                                     'sha256': sha256(value or self.value)},
                                         timeout=CALL_TIMEOUT_S)
        self.assertEqual(status, 200, obj)
        return obj

    def test_the_app_sees_its_secret_and_the_other_does_not(self):
        obj = self.check('local/sec-a')
        self.assertTrue(obj['set'], obj)
        self.assertTrue(obj['matches'], obj)
        #  A value with '=' in it stays whole
        self.assertTrue(self.check('local/sec-a', 'OTHER_ONE', 'x=y')['matches'])
        other = self.check('local/sec-b')
        self.assertFalse(other['set'], other)
        #  The runners' own environments: the kiln-runner of a holds it,
        #  b's holds none of it
        for app, expect in (('local/sec-a', True), ('local/sec-b', False)):
            pids = wait_until(lambda: self.stack.runner_pids(app), what='a runner of ' + app)
            for pid in pids:
                env = proc_environ(pid)
                self.assertEqual(env.get('MY_SECRET') == self.value, expect, app)
                if not expect:
                    self.assertNotIn(self.value, json.dumps(env))

    def test_a_runner_holds_no_connection_to_redis(self):
        #  The worker's is authenticated: every app's secrets, the keys,
        #  the queues. No runner may inherit it (nor any other).
        self.check('local/sec-a')
        pids = wait_until(lambda: self.stack.runner_pids('local/sec-a'), what='a runner')
        for pid in pids:
            self.assertNotIn(self.stack.redis_port, tcp_peer_ports(pid))
        #  The check can see one: the worker's own
        worker_ports = tcp_peer_ports(self.stack.pid('worker'))
        self.assertIn(self.stack.redis_port, worker_ports)

    def test_the_value_is_shown_nowhere(self):
        self.check('local/sec-a')           # a runner started with it
        self.assertNotIn(self.value, self.set_output)
        self.assertIn('MY_SECRET', self.set_output)
        seen = []
        for path in ('/v1/apps/local/sec-a', '/v1/apps', '/v1/runners',
                     '/v1/apps/local/sec-a/secrets', '/v1/apps/local/sec-a/logs?limit=1000',
                     '/v1/workers', '/metrics'):
            status, _, body = self.stack.http('GET', path)
            self.assertLess(status, 400, (path, body[:200]))
            seen.append((path, body.decode('utf-8', 'replace')))
        for args in (('apps', 'show', 'local/sec-a'), ('apps', 'list'),
                     ('secrets', 'list', 'local/sec-a'), ('secrets', 'list', 'local/sec-a', '--json'),
                     ('logs', 'local/sec-a'), ('runners',)):
            result = self.stack.kiln(*args)
            self.assertEqual(result.returncode, 0, (args, result.stderr))
            seen.append((' '.join(args), result.stdout + result.stderr))
        for name in ('gateway', 'broker', 'worker', 'redis'):
            with open(self.stack.log_path(name), errors='replace') as f:
                seen.append((name + '.log', f.read()))
        for where, text in seen:
            self.assertNotIn(self.value, text, 'the secret value is in ' + where)
        #  The listing names the secrets
        status, _, body = self.stack.http('GET', '/v1/apps/local/sec-a/secrets')
        listing = json.loads(body)
        self.assertEqual([s['name'] for s in listing['secrets']], ['MY_SECRET', 'OTHER_ONE'])
        self.assertTrue(all(isinstance(s['updated_ms'], int) for s in listing['secrets']))
        listed = self.stack.kiln('secrets', 'list', 'local/sec-a').stdout
        self.assertIn('MY_SECRET', listed)
        self.assertIn('OTHER_ONE', listed)

    def test_names_and_values_are_checked(self):
        for bad in ('lower=1', 'KILN_APP=1', '9X=1', 'NOEQUALS'):
            result = self.stack.kiln('secrets', 'set', 'local/sec-b', bad)
            self.assertEqual(result.returncode, 2, (bad, result.stdout, result.stderr))
        #  The API says the same, and never echoes a value
        for body, status_code in (({'bad-name': 'v'}, 400), ({'KILN_X': 'v'}, 400),
                                  ({'X': 5}, 422), ({}, 422), ([1], 422),
                                  ({'BIG': 'z' * (32 * 1024 + 1)}, 413)):
            status, headers, answer = self.stack.http('PUT', '/v1/apps/local/sec-b/secrets', body)
            obj = self.assertJsonError(status, headers, answer, status_code)
            self.assertNotIn('zzzz', obj['detail'])
        status, headers, answer = self.stack.http('PUT', '/v1/apps/local/nope/secrets', {'X': 'v'})
        self.assertJsonError(status, headers, answer, 404, 'not_found')
        status, headers, answer = self.stack.http('DELETE', '/v1/apps/local/sec-b/secrets/lower')
        self.assertJsonError(status, headers, answer, 400, 'bad_request')
        status, headers, answer = self.stack.http('DELETE', '/v1/apps/local/sec-b/secrets/NOPE')
        self.assertJsonError(status, headers, answer, 404, 'not_found')
        result = self.stack.kiln('secrets', 'unset', 'local/sec-b', 'NOPE')
        self.assertEqual(result.returncode, 3, result.stderr)

    def test_unset_and_delete(self):
        self.stack.deploy(kiln_harness.example('echo'), 'local/sec-c')
        result = self.stack.kiln('secrets', 'set', 'local/sec-c', 'A=1', 'B=2')
        self.assertEqual(result.returncode, 0, result.stderr)
        result = self.stack.kiln('secrets', 'unset', 'local/sec-c', 'A')
        self.assertEqual(result.returncode, 0, result.stderr)
        listed = json.loads(self.stack.kiln('secrets', 'list', 'local/sec-c', '--json').stdout)
        self.assertEqual([s['name'] for s in listed['secrets']], ['B'])
        with self.stack.redis() as redis:
            self.assertEqual(redis.command('EXISTS', 'kiln:app:local/sec-c:secrets'), 1)
            result = self.stack.kiln('apps', 'delete', 'local/sec-c')
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(redis.command('EXISTS', 'kiln:app:local/sec-c:secrets'), 0)
        #  A new app of that name starts with none
        self.stack.deploy(kiln_harness.example('echo'), 'local/sec-c')
        listed = json.loads(self.stack.kiln('secrets', 'list', 'local/sec-c', '--json').stdout)
        self.assertEqual(listed['secrets'], [])


class SecretsAccessTest(kiln_harness.KilnTestCase):
    """With keys required: the secrets routes are the app owner's ADMIN
    keys' (and the operator's); another owner's key gets the answer of an
    unknown app, an API key 403, no key 401."""

    @classmethod
    def setUpClass(cls):
        stack = kiln_harness.Stack(name='secretsauth', env={'KILN_AUTH': 'required'})
        cls.stack = stack
        try:
            stack.start_redis()
            made = stack.kiln('keys', 'create', '--redis', stack.env['KILN_REDIS_URL'],
                              '--scope', 'ADMIN', '--owner', '*')
            if made.returncode != 0:
                raise AssertionError('kiln keys create --redis failed: %s' % made.stderr)
            stack.env['KILN_KEY'] = made.stdout.strip()
            stack.start_broker()
            stack.start_gateway()
            stack.start_worker()
            stack.deploy(kiln_harness.example('echo'), 'alice/echo')
            cls.keys = {}
            for owner, scope in (('alice', 'ADMIN'), ('alice', 'API'), ('bob', 'ADMIN')):
                status, _, body = stack.http('POST', '/v1/keys', {'scope': scope, 'owner': owner},
                                             headers=cls.auth(stack.env['KILN_KEY']))
                assert status == 201, (owner, scope, status, body)
                cls.keys[owner, scope] = json.loads(body)['key']
        except BaseException:
            stack.dump_logs()
            stack.close()
            cls.stack = None
            raise

    @staticmethod
    def auth(key):
        return {'Authorization': 'Key ' + key} if key else {}

    def test_who_may_manage_secrets(self):
        base = '/v1/apps/alice/echo/secrets'
        calls = (('PUT', base, {'TOKEN': 'v'}), ('GET', base, None), ('DELETE', base + '/TOKEN', None))
        for method, path, body in calls:
            status, headers, answer = self.stack.http(method, path, body)
            self.assertJsonError(status, headers, answer, 401, 'unauthorized')
            status, headers, answer = self.stack.http(method, path, body,
                                                      headers=self.auth(self.keys['alice', 'API']))
            self.assertJsonError(status, headers, answer, 403, 'forbidden')
            status, headers, answer = self.stack.http(method, path, body,
                                                      headers=self.auth(self.keys['bob', 'ADMIN']))
            self.assertJsonError(status, headers, answer, 404, 'not_found')
        owner = self.auth(self.keys['alice', 'ADMIN'])
        status, _, answer = self.stack.http('PUT', base, {'TOKEN': 'v'}, headers=owner)
        self.assertEqual(status, 200, answer)
        status, _, answer = self.stack.http('GET', base, headers=owner)
        self.assertEqual([s['name'] for s in json.loads(answer)['secrets']], ['TOKEN'])
        #  The CLI with the operator's key
        result = self.stack.kiln('secrets', 'list', 'alice/echo')
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn('TOKEN', result.stdout)
        status, _, answer = self.stack.http('DELETE', base + '/TOKEN', headers=owner)
        self.assertEqual(status, 200, answer)


if __name__ == '__main__':
    kiln_harness.main()
