"""Signed webhooks (issue 7, item 4), end to end: every delivery carries
x-fal-webhook-request-id, -user-id, -timestamp and -signature, which a
receiver verifies with the Ed25519 key the gateway publishes at
/.well-known/jwks.json (here with the `cryptography` package, as a kiln
user would); every try is signed anew; one key pair, kept in Redis, is
shared by every broker and gateway; and a broker that is not told
KILN_WEBHOOK_ALLOW_PRIVATE=1 refuses a target on loopback."""

import base64
import hashlib
import json
import time

import kiln_harness
from kiln_harness import WebhookReceiver, example, free_port, spawn, stop_process, wait_until

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:         # pragma: no cover - the package is a test dependency
    Ed25519PublicKey = None

#  First retry delay: over a second, so a retry's timestamp is later.
BACKOFF_MS = 1100
#  How far a delivery's timestamp may be from this machine's clock.
CLOCK_SLACK_S = 5
REFUSED = ('webhook target 127.0.0.1 is in a private range; '
           'set KILN_WEBHOOK_ALLOW_PRIVATE=1 to allow it')


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def signed_message(request_id, user_id, timestamp, body):
    """What kiln signs: request id, user id, timestamp and the body's
    SHA-256 in hex, joined by newlines."""
    return '\n'.join([request_id, user_id, timestamp,
                      hashlib.sha256(body).hexdigest()]).encode()


def verify(public_key, headers, body):
    """True when the delivery's signature is valid for these bytes."""
    message = signed_message(headers['x-fal-webhook-request-id'],
                             headers['x-fal-webhook-user-id'],
                             headers['x-fal-webhook-timestamp'], body)
    try:
        public_key.verify(bytes.fromhex(headers['x-fal-webhook-signature']), message)
        return True
    except (InvalidSignature, ValueError):
        return False


class SigningTestCase(kiln_harness.QueueTestCase):

    app = 'local/echo'

    def setUp(self):
        if Ed25519PublicKey is None:
            self.skipTest('the python3 cryptography package is not installed')
        self.hook = WebhookReceiver()
        self.addCleanup(self.hook.close)

    def submit_with_hook(self, payload, path='/hook'):
        return self.submit(payload, query='?fal_webhook=' + self.hook.url(path))['request_id']

    def webhook_state(self, request_id, state, timeout=20.0):
        def reached():
            record = self.stack.record(request_id)
            return record if record.get('webhook_state') == state else None
        return wait_until(reached, timeout, interval=0.02,
                          what='webhook_state %s for %s' % (state, request_id))

    def jwks(self, port=None):
        """GET /.well-known/jwks.json with no key: the one key, checked for
        shape; (kid, Ed25519PublicKey, raw JSON text)."""
        status, headers, body = kiln_harness.http_request(
            port or self.stack.http_port, 'GET', '/.well-known/jwks.json')
        self.assertEqual(status, 200, body)
        self.assertTrue(headers.get('content-type', '').startswith('application/json'), headers)
        keys = json.loads(body)['keys']
        self.assertEqual(len(keys), 1, keys)
        key = keys[0]
        self.assertEqual((key['kty'], key['crv'], key['alg'], key['use']),
                         ('OKP', 'Ed25519', 'EdDSA', 'sig'), key)
        self.assertRegex(key['kid'], '^[0-9a-f]{16}$')
        raw = b64url_decode(key['x'])
        self.assertEqual(len(raw), 32)
        self.assertEqual(key['kid'], raw[:8].hex(), 'kid is not the public key\'s first bytes')
        return key['kid'], Ed25519PublicKey.from_public_bytes(raw), body

    def stored_kid(self):
        with self.stack.redis() as r:
            text = r.command('GET', 'kiln:signing_key')
        self.assertIsNotNone(text, 'no kiln:signing_key in Redis')
        if isinstance(text, bytes):
            text = text.decode()
        return text.split(':')[0]

    def assert_signed(self, delivery, request_id, public_key):
        """The delivery's headers name the request and its owner, with a
        current timestamp, and its signature verifies; returns the
        timestamp."""
        _, _, headers, body = delivery
        self.assertEqual(headers.get('x-fal-webhook-request-id'), request_id, headers)
        self.assertEqual(headers.get('x-fal-webhook-user-id'), 'local', headers)
        self.assertRegex(headers.get('x-fal-webhook-timestamp', ''), r'^[0-9]+$')
        self.assertRegex(headers.get('x-fal-webhook-signature', ''), '^[0-9a-f]{128}$')
        timestamp = int(headers['x-fal-webhook-timestamp'])
        self.assertLess(abs(timestamp - time.time()), CLOCK_SLACK_S, headers)
        self.assertTrue(verify(public_key, headers, body),
                        'the signature does not verify with the published key')
        self.assertEqual(json.loads(body)['request_id'], request_id)
        return timestamp


class WebhookSigningTest(SigningTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_WEBHOOK_BACKOFF_MS': str(BACKOFF_MS),
                             'KILN_WEBHOOK_TRIES': '3',
                             'KILN_WEBHOOK_TIMEOUT_MS': '3000'})
        cls.deploy_or_dump(example('echo'), 'local/echo')

    def test_delivery_verifies_with_the_published_key(self):
        request_id = self.submit_with_hook({'prompt': 'sign me'})
        delivery, = self.hook.wait_for(1)
        self.webhook_state(request_id, 'delivered')
        kid, public_key, _ = self.jwks()
        self.assertEqual(kid, self.stored_kid())
        self.assert_signed(delivery, request_id, public_key)

    def test_tampered_delivery_fails_verification(self):
        request_id = self.submit_with_hook({'prompt': 'do not touch'})
        delivery, = self.hook.wait_for(1)
        _, public_key, _ = self.jwks()
        _, _, headers, body = delivery
        self.assertTrue(verify(public_key, headers, body))
        tampered = body.replace(b'do not touch', b'do not tuoch')
        self.assertNotEqual(tampered, body)
        self.assertFalse(verify(public_key, headers, tampered), 'a changed body verified')
        self.assertFalse(verify(public_key, headers, body + b' '), 'a longer body verified')
        for name, value in (('x-fal-webhook-request-id', '0' * 8 + request_id[8:]),
                            ('x-fal-webhook-user-id', 'someone-else'),
                            ('x-fal-webhook-timestamp',
                             str(int(headers['x-fal-webhook-timestamp']) + 1))):
            with self.subTest(header=name):
                self.assertFalse(verify(public_key, dict(headers, **{name: value}), body),
                                 'a changed %s verified' % name)

    def test_retry_is_signed_anew(self):
        self.hook.set_answers([500])
        request_id = self.submit_with_hook({'prompt': 'again'})
        first, second = self.hook.wait_for(2)
        self.webhook_state(request_id, 'delivered')
        _, public_key, _ = self.jwks()
        self.assertEqual(first[3], second[3], 'a retry sent another body')
        first_ts = self.assert_signed(first, request_id, public_key)
        second_ts = self.assert_signed(second, request_id, public_key)
        self.assertGreater(second_ts, first_ts, 'the retry was not signed with a fresh timestamp')
        self.assertNotEqual(first[2]['x-fal-webhook-signature'],
                            second[2]['x-fal-webhook-signature'])

    def test_brokers_and_gateways_share_one_key(self):
        kid, public_key, text = self.jwks()
        #  A second gateway on the same Redis publishes the same set
        port = free_port()
        env = dict(self.stack.env, KILN_HTTP_ADDR='127.0.0.1:%d' % port)
        other = spawn([kiln_harness.program('kiln-gateway')], env,
                      self.stack.log_path('gateway-2'))
        try:
            wait_until(lambda: kiln_harness.http_request(port, 'GET', '/health', timeout=2)[0]
                       == 200, 15, what='a second gateway to answer')
            self.assertEqual(self.jwks(port)[2], text)
        finally:
            self.assertEqual(stop_process(other), 0)
        #  A broker started again signs with the same key
        self.stack.stop('broker')
        self.stack.start_broker()
        request_id = self.submit_with_hook({'prompt': 'after a restart'})
        delivery, = self.hook.wait_for(1)
        self.assertEqual(self.jwks()[0], kid)
        self.assert_signed(delivery, request_id, public_key)

    def test_gateway_makes_the_key_when_none_exists(self):
        #  A fresh Redis (the key deleted): the first JWKS read makes one,
        #  and brokers (at their next start) sign with it.
        old_kid, _, _ = self.jwks()
        try:
            with self.stack.redis() as r:
                r.command('DEL', 'kiln:signing_key')
            kid, public_key, text = self.jwks()
            self.assertNotEqual(kid, old_kid)
            self.assertEqual(self.stored_kid(), kid)
            self.assertEqual(self.jwks()[2], text, 'the key set changed between two reads')
        finally:
            self.stack.stop('broker')
            self.stack.start_broker()
        request_id = self.submit_with_hook({'prompt': 'new key'})
        delivery, = self.hook.wait_for(1)
        self.assert_signed(delivery, request_id, public_key)

    def test_jwks_is_get_only_and_needs_no_key(self):
        status, headers, body = self.stack.http('HEAD', '/.well-known/jwks.json')
        self.assertEqual(status, 200)
        status, headers, body = self.stack.http('POST', '/.well-known/jwks.json', {})
        self.assertJsonError(status, headers, body, 405)
        status, headers, body = self.stack.http('GET', '/.well-known/other')
        self.assertJsonError(status, headers, body, 404)


class PrivateTargetTest(SigningTestCase):
    """A broker without KILN_WEBHOOK_ALLOW_PRIVATE (the default outside
    tests) refuses to deliver to loopback."""

    @classmethod
    def setUpClass(cls):
        cls.start_stack(env={'KILN_WEBHOOK_ALLOW_PRIVATE': '0',
                             'KILN_WEBHOOK_BACKOFF_MS': '100',
                             'KILN_WEBHOOK_TRIES': '5'})
        cls.deploy_or_dump(example('echo'), 'local/echo')

    def test_loopback_target_is_refused_at_once(self):
        request_id = self.submit_with_hook({'prompt': 'to localhost'})
        record = self.webhook_state(request_id, 'failed')
        self.assertEqual(record.get('webhook_last_error'), REFUSED, record)
        self.assertEqual(record.get('webhook_attempts'), '1', 'a refused target was retried')
        time.sleep(0.5)
        self.assertEqual(self.hook.received(), [], 'the receiver on loopback got a delivery')
        with self.stack.redis() as r:
            self.assertIsNone(r.command('ZSCORE', 'kiln:webhooks', request_id))
        #  The request itself is fine: only its webhook was refused
        self.assertEqual(self.result(request_id)[0], 200)


if __name__ == '__main__':
    kiln_harness.main()
