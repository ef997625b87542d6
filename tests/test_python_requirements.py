"""Python apps with `requirements` (docs/PROCESS_APPS.md, "Requirements"):
the first runner builds a virtual environment with them, cached on the
worker by the hash of the requirements and the Python; every later runner
reuses it, and a second runner of a revision fetches no artifact. A
requirement that cannot be installed fails the setup with pip's message.

No network: the requirement is a local package directory shipped in the
tests (tests/apps/python/pkgs/kilntestpkg), whose build backend is its
own, standard library only, so pip needs no index to build it. The
package's backend appends a line to $KILN_TEST_BUILD_LOG at each build:
that counts how often pip installed it."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

import kiln_harness
from kiln_harness import SOURCE_DIR, wait_until

APPS = os.path.join(SOURCE_DIR, 'tests', 'apps', 'python')
PACKAGE = os.path.join(APPS, 'pkgs', 'kilntestpkg')
BAD_PACKAGE = os.path.join(APPS, 'pkgs', 'kilnbadpkg')
#  A venv and a pip run per build, on two busy cores.
BUILD_TIMEOUT_S = 150
#  Three failed starts (each a venv and a failing pip) and the broker's
#  back-off between them.
SETUP_FAILURE_TIMEOUT_S = 180
#  What worker/venv.c asks python3 to say about itself.
PYTHON_IDENTITY_CODE = ("import sys; print(sys.implementation.name, "
                        "sys.version.replace(chr(10), ' '), sys.executable)")


def fingerprint(text):
    """What kilntestpkg.fingerprint computes."""
    return hashlib.sha256(('kilntestpkg:' + text).encode()).hexdigest()[:16]


def venv_hash(env, requirements, pip_args=''):
    """The environment's name, as worker/venv.c computes it."""
    identity = subprocess.run(['python3', '-c', PYTHON_IDENTITY_CODE], env=env, check=True,
                              capture_output=True, text=True).stdout.rstrip('\r\n')
    text = 'kiln-venv 1\npython %s\npip-args %s\n' % (identity, pip_args)
    text += ''.join('requirement %s\n' % r for r in sorted(requirements))
    return hashlib.sha256(text.encode()).hexdigest()


class PythonRequirementsTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.mkdtemp(prefix='kiln-test-requirements-')
        cls.build_log = os.path.join(cls.scratch, 'builds.log')
        #  An operator's pip arguments or venv dir, if this machine has
        #  them, are not the test's: empty is unset.
        cls.start_stack(env={'KILN_TEST_BUILD_LOG': cls.build_log, 'KILN_PIP_ARGS': '',
                             'KILN_VENV_DIR': ''})
        cls.venvs = os.path.join(cls.stack.state_dir, 'worker', 'venvs')
        cls.venv = os.path.join(cls.venvs, venv_hash(cls.stack.env, [PACKAGE]))
        cls.deploy_or_dump(os.path.join(APPS, 'requiring.py') + '::Requiring', 'local/requiring')
        cls.deploy_or_dump(os.path.join(APPS, 'badrequiring.py') + '::BadRequiring',
                           'local/badrequiring')

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.scratch, ignore_errors=True)

    def builds(self):
        """How many times pip built the package."""
        try:
            with open(self.build_log) as f:
                return len(f.read().splitlines())
        except FileNotFoundError:
            return 0

    def runners_in_the_venv(self):
        """Runners of local/requiring whose app process runs the venv's
        python (it exists only once the environment was ready)."""
        python = os.path.join(self.venv, 'bin', 'python').encode()
        found = []
        for pid in self.stack.runner_pids('local/requiring'):
            for child in kiln_harness.descendants(pid):
                argv = kiln_harness.proc_cmdline(child)
                if argv and argv[0] == python and b'kiln.serve' in argv:
                    found.append(pid)
                    break
        return found

    def wait_runners(self, count):
        wait_until(lambda: len(self.runners_in_the_venv()) >= count, BUILD_TIMEOUT_S,
                   interval=0.2,
                   what='%d runners of local/requiring on the environment %s' % (count, self.venv))

    def test_1_the_app_uses_its_requirement(self):
        status, _, obj = self.stack.call('/local/requiring', {'text': 'kiln'},
                                         timeout=BUILD_TIMEOUT_S)
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj['fingerprint'], fingerprint('kiln'))
        #  From the worker's cached environment, named by the hash.
        self.assertEqual(os.path.realpath(obj['prefix']), os.path.realpath(self.venv))
        self.assertTrue(os.path.realpath(obj['module']).startswith(
            os.path.realpath(self.venv) + os.sep), obj['module'])
        self.assertTrue(os.path.isfile(os.path.join(self.venv, '.kiln-ready')))
        #  Nothing half-built or temporary next to it.
        names = sorted(os.listdir(self.venvs))
        self.assertEqual(names, sorted([os.path.basename(self.venv),
                                        os.path.basename(self.venv) + '.lock']), names)

    def test_2_runners_share_one_environment(self):
        #  min_concurrency 2: both runners wanted the environment at once;
        #  one built it, the other waited on the lock and reused it.
        self.wait_runners(2)
        self.assertEqual(self.builds(), 1)
        ready = os.stat(os.path.join(self.venv, '.kiln-ready'))
        #  A third runner, later, uses it as it is.
        result = self.stack.kiln('apps', 'scale', 'local/requiring', '--min', '3')
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.wait_runners(3)
        self.assertEqual(self.builds(), 1)
        again = os.stat(os.path.join(self.venv, '.kiln-ready'))
        self.assertEqual((again.st_ino, again.st_mtime_ns), (ready.st_ino, ready.st_mtime_ns))
        #  Whichever runner answers, it answers from there.
        for i in range(6):
            status, _, obj = self.stack.call('/local/requiring', {'text': str(i)}, timeout=60)
            self.assertEqual(status, 200, obj)
            self.assertEqual(obj['fingerprint'], fingerprint(str(i)))
            self.assertEqual(os.path.realpath(obj['prefix']), os.path.realpath(self.venv))

    def test_3_a_second_runner_fetches_no_artifact(self):
        self.wait_runners(2)
        result = self.stack.kiln('apps', 'show', 'local/requiring', '--json')
        self.assertEqual(result.returncode, 0, result.stderr)
        sha = json.loads(result.stdout)['artifact']
        self.assertRegex(sha, '^[0-9a-f]{64}$')
        with open(self.stack.log_path('worker'), errors='replace') as f:
            log = f.read()
        started = re.findall(r'runner \S+ for local/requiring started', log)
        self.assertGreaterEqual(len(started), 2, log[-3000:])
        fetched = re.findall(r'artifact %s: fetched' % sha, log)
        self.assertEqual(len(fetched), 1, log[-3000:])
        unpacked = re.findall(r'artifact %s: unpacked' % sha, log)
        self.assertEqual(len(unpacked), 1, log[-3000:])

    def test_4_a_failed_install_fails_the_setup_with_pips_message(self):
        why = 'kilnbadpkg cannot be built: it is broken on purpose'
        status, headers, body = self.stack.http('POST', '/local/badrequiring', {},
                                                timeout=SETUP_FAILURE_TIMEOUT_S)
        self.assertGreaterEqual(status, 500, body)
        self.assertLess(status, 600, body)
        self.assertTrue(headers.get('content-type', '').startswith('application/json'), headers)
        obj = json.loads(body)
        self.assertIsInstance(obj.get('detail'), str, obj)
        self.assertIn('pip could not install the requirements', obj['detail'])
        self.assertIn(why, obj['detail'])

        def shown():
            result = self.stack.kiln('apps', 'show', 'local/badrequiring', '--json')
            last_error = json.loads(result.stdout).get('last_error') if result.returncode == 0 else None
            return last_error and why in last_error
        wait_until(shown, 30, what='kiln apps show local/badrequiring to show %r' % why)
        #  The failed environment is gone: the next runner tries afresh.
        bad = os.path.join(self.venvs, venv_hash(self.stack.env, [BAD_PACKAGE]))
        self.assertFalse(os.path.exists(bad), os.listdir(self.venvs))


if __name__ == '__main__':
    kiln_harness.main()
