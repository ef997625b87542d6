"""A Redis URL with an ACL user (redis://user:password@host): the
gateway's connections authenticate as that user (AUTH user password), not
with the password alone as the default user, and calls go through."""

import kiln_harness
from kiln_harness import example

USER = 'kilnacl'
PASSWORD = 'acl-pw-7'


class RedisAclTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack()
        cls.deploy_or_dump(example('echo'), 'local/echo')

    def clients_of(self, user):
        with self.stack.redis() as r:
            listing = r.command('CLIENT', 'LIST')
        if isinstance(listing, bytes):
            listing = listing.decode()
        return [line for line in listing.splitlines() if (' user=%s ' % user) in line]

    def test_the_gateway_authenticates_as_the_acl_user(self):
        with self.stack.redis() as r:
            self.assertEqual(r.command('ACL', 'SETUSER', USER, 'on', '>' + PASSWORD,
                                       '~*', '&*', '+@all'), 'OK')
        self.assertEqual(self.clients_of(USER), [])
        self.stack.stop('gateway')
        self.stack.env['KILN_REDIS_URL'] = 'redis://%s:%s@127.0.0.1:%d' % (
            USER, PASSWORD, self.stack.redis_port)
        self.stack.start_gateway()
        #  Its command connection and its subscriber
        self.assertGreaterEqual(len(self.clients_of(USER)), 2, self.clients_of(USER))
        status, _, obj = self.stack.call('/local/echo', {'acl': True})
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['input'], {'acl': True})


if __name__ == '__main__':
    kiln_harness.main()
