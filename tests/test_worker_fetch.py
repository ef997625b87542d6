"""A worker whose Redis is slow to answer the fetch of a runner's
artifact keeps heartbeating (the fetch runs off its loop): the broker
never takes it for dead, and the runner starts once the answer comes. A
worker asked to leave while a fetch is held leaves at once, the runner
it never started reported gone.

w-slow reaches Redis through a proxy (HoldingProxy) that can hold the
next answer Redis sends it for a while; the app it serves (local/a100,
GPU-A100) can run nowhere else."""

import signal
import socket
import threading
import time

import kiln_harness
from kiln_harness import free_ports, wait_until

import scaling_helpers
from scaling_helpers import call, scaling_app, start_worker, wait_registered

#  Longer than the broker's liveness (3 heartbeats of 1 s): a worker
#  whose loop waited this long would be forgotten.
HOLD_S = 5.0
#  A worker asked to leave while a fetch is held leaves within this.
LEAVE_S = 4.0


class HoldingProxy:
    """A TCP proxy to Redis: hold(s) makes it keep the next answer from
    Redis (to any client) for s seconds before passing it on."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.port = free_ports(1)[0]
        self.lock = threading.Lock()
        self.hold_s = 0.0
        self.held = threading.Event()       # an answer is being held now
        self.listener = socket.create_server(('127.0.0.1', self.port))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, seconds):
        with self.lock:
            self.hold_s = seconds
        self.held.clear()

    def close(self):
        self.closed = True
        self.listener.close()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(('127.0.0.1', self.target_port))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source, sink, answers):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if answers:
                    with self.lock:
                        hold, self.hold_s = self.hold_s, 0.0
                    if hold:
                        self.held.set()
                        time.sleep(hold)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class WorkerFetchTest(scaling_helpers.ScalingTestCase):

    @classmethod
    def setUpClass(cls):
        cls.start_stack(worker_args=['--id', 'w-cpu', '--slots', 'CPU=2'])
        cls.proxy = HoldingProxy(cls.stack.redis_port)
        start_worker(cls.stack, 'w-slow', 'GPU-A100=1',
                     ['--redis', 'redis://127.0.0.1:%d' % cls.proxy.port])
        wait_registered(cls.stack, 'w-cpu', 'w-slow')
        cls.deploy_or_dump(scaling_app('a100'), 'local/a100')

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.proxy.close()

    def forgotten(self, worker_id):
        """Lines where the broker took the worker for gone."""
        log = kiln_harness.tail(self.stack.log_path('broker'), 100000)
        return [line for line in log.splitlines()
                if ('worker %s (' % worker_id) in line and ') gone (' in line]

    def test_1_heartbeats_go_on_while_a_fetch_waits(self):
        self.proxy.hold(HOLD_S)
        started = time.monotonic()
        status, obj = call(self.stack, '/local/a100', {'ms': 0}, timeout=60)
        elapsed = time.monotonic() - started
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['worker'], 'w-slow', obj)
        self.assertTrue(self.proxy.held.is_set(), 'the proxy held no answer: the test tested nothing')
        self.assertGreaterEqual(elapsed, HOLD_S - 0.5, 'the first call did not wait for the held fetch')
        self.assertEqual(self.forgotten('w-slow'), [],
                         'the broker took the worker for dead while it fetched')

    def test_2_a_worker_leaves_while_a_fetch_waits(self):
        #  Another app on the one slot: its runner's secrets are read
        #  through the proxy (the artifact is cached already), and the
        #  idle runner of local/a100 gives the slot up.
        self.stack.deploy(scaling_app('a100'), 'local/a100-next')
        self.proxy.hold(3 * LEAVE_S)
        status, _, obj = self.stack.queue_submit('/local/a100-next', {'ms': 0})
        self.assertEqual(status, 200, obj)
        wait_until(self.proxy.held.is_set, 10, interval=0.05,
                   what='the fetch of the runner of local/a100-next to be held')
        name = scaling_helpers.worker_name('w-slow')
        started = time.monotonic()
        status = self.stack.stop(name, signal.SIGTERM)
        self.assertEqual(status, 0, 'w-slow exited with status %s' % status)
        self.assertLess(time.monotonic() - started, LEAVE_S,
                        'w-slow waited for its held fetch before leaving')
        worker_log = kiln_harness.tail(self.stack.log_path(name), 100000)
        self.assertIn('stopped before it started', worker_log)


if __name__ == '__main__':
    import unittest
    unittest.main()
