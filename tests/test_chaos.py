"""The chaos suite's short run (issue 6): tests/chaos/chaos.py with a fixed
seed, about a minute of faults (runners, the worker, the broker, the
gateway and redis-server killed and restarted) under a small load of sync
and queued calls; every accepted request must complete exactly once. The
long soak is `make chaos`."""

import os
import re
import subprocess
import sys
import unittest

import kiln_harness

CHAOS = os.path.join(kiln_harness.SOURCE_DIR, 'tests', 'chaos', 'chaos.py')
SEED = int(os.environ.get('KILN_CHAOS_SEED', '6'))
SECONDS = os.environ.get('KILN_CHAOS_SECONDS', '50')
SUMMARY_RE = re.compile(
    r'^accepted (\d+), completed (\d+), lost (\d+), duplicated (\d+), '
    r'failed-with-error (\d+) \(by type: ([^)]*)\)$', re.M)


class ChaosTest(unittest.TestCase):

    def test_short_chaos_run_loses_nothing(self):
        kiln_harness.program('kiln-gateway')        # fails early when not built
        result = subprocess.run(
            [sys.executable, '-u', CHAOS, '--seed', str(SEED), '--seconds', SECONDS,
             '--clients', '2', '--settle', '90'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=280)
        sys.stdout.write(result.stdout)
        match = SUMMARY_RE.search(result.stdout)
        self.assertIsNotNone(match, 'no summary line from the chaos run')
        accepted, completed, lost, duplicated = (int(g) for g in match.groups()[:4])
        self.assertGreater(accepted, 50, 'hardly any load got through')
        self.assertEqual(lost, 0, 'requests lost (seed %d)' % SEED)
        self.assertEqual(duplicated, 0, 'results recorded twice (seed %d)' % SEED)
        self.assertEqual(completed, accepted)
        self.assertEqual(result.returncode, 0, 'chaos run failed (seed %d)' % SEED)


if __name__ == '__main__':
    unittest.main(verbosity=2)
