"""docker-compose.yml is valid and describes the stack: redis, broker,
gateway and worker, the worker reserving the host's NVIDIA GPUs."""

import os
import shutil
import subprocess
import unittest

import kiln_harness

COMPOSE_FILE = os.path.join(kiln_harness.SOURCE_DIR, 'docker-compose.yml')


def yaml_blocks(text, indent):
    """{key: lines below it} for the keys at exactly `indent` spaces in a
    block-style YAML text (what `docker-compose config` prints)."""
    blocks, current = {}, None
    for line in text.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(' '))
        if depth == indent and line.rstrip().endswith(':') and not line.lstrip().startswith('-'):
            current = line.strip()[:-1]
            blocks[current] = []
        elif depth <= indent:
            current = None
        elif current is not None:
            blocks[current].append(line)
    return blocks


class ComposeTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if not shutil.which('docker-compose'):
            raise unittest.SkipTest('docker-compose is not installed')
        cls.result = subprocess.run(
            ['docker-compose', '-f', COMPOSE_FILE, 'config'], cwd=kiln_harness.SOURCE_DIR,
            capture_output=True, text=True, timeout=60)

    def test_config_is_valid(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr)

    def test_services(self):
        top = yaml_blocks(self.result.stdout, 0)
        self.assertIn('services', top, self.result.stdout)
        services = yaml_blocks('\n'.join(top['services']), 2)
        for name in ('redis', 'broker', 'gateway', 'worker'):
            self.assertIn(name, services, 'no service %s in:\n%s' % (name, self.result.stdout))

    def test_worker_reserves_an_nvidia_gpu(self):
        top = yaml_blocks(self.result.stdout, 0)
        services = yaml_blocks('\n'.join(top.get('services', [])), 2)
        worker = '\n'.join(services.get('worker', []))
        devices = '\n'.join(yaml_blocks(worker, 4).get('deploy', []))
        self.assertIn('reservations:', devices, worker)
        self.assertIn('devices:', devices, worker)
        self.assertRegex(devices, r'driver: nvidia', worker)
        self.assertRegex(devices, r'capabilities:\s*\n\s*- gpu|capabilities: \[.*gpu.*\]', worker)


if __name__ == '__main__':
    kiln_harness.main()
