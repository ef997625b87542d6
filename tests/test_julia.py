"""The julia example end to end: an app that renders an image, stores it
as a file and answers with fal's Image shape; the gateway serves the file.
The PNG is checked byte by byte (signature, chunk CRCs, IHDR, IDAT size)."""

import json
import os
import shutil
import struct
import subprocess
import urllib.parse
import zlib

import kiln_harness
from kiln_harness import BUILD_DIR, example

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
#  Samples per pixel for each PNG colour type.
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def parse_png(data):
    """Checks a PNG and returns (width, height, channels, raw_size) where
    raw_size is the size of the decompressed image data. Raises
    AssertionError on anything malformed."""
    check(data[:8] == PNG_SIGNATURE, 'bad PNG signature %r' % data[:8])
    at = 8
    chunks = []
    while at < len(data):
        check(at + 12 <= len(data), 'truncated chunk header at %d' % at)
        length, kind = struct.unpack('>I4s', data[at:at + 8])
        end = at + 8 + length
        check(end + 4 <= len(data), 'chunk %r runs past the end' % kind)
        payload = data[at + 8:end]
        (crc,) = struct.unpack('>I', data[end:end + 4])
        check(crc == zlib.crc32(kind + payload), 'bad CRC in chunk %r' % kind)
        chunks.append((kind, payload))
        at = end + 4
    check(chunks and chunks[0][0] == b'IHDR', 'first chunk is not IHDR')
    check(chunks[-1] == (b'IEND', b''), 'last chunk is not an empty IEND')
    width, height, depth, colour, compression, filtering, interlace = \
        struct.unpack('>IIBBBBB', chunks[0][1])
    check(colour in PNG_CHANNELS, 'colour type %d' % colour)
    check(depth == 8, 'bit depth %d' % depth)
    check((compression, filtering, interlace) == (0, 0, 0), 'compression, filter or interlace method')
    idat = b''.join(payload for kind, payload in chunks if kind == b'IDAT')
    check(idat, 'no IDAT chunk')
    raw = zlib.decompress(idat)
    channels = PNG_CHANNELS[colour]
    row = 1 + width * channels
    for y in range(min(height, len(raw) // row)):
        check(raw[y * row] <= 4, 'bad filter type %d on row %d' % (raw[y * row], y))
    return width, height, channels, len(raw)


def machine_has_nvidia_gpu():
    if shutil.which('nvidia-smi'):
        try:
            listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True,
                                     text=True, timeout=30)
            return listing.returncode == 0 and 'GPU' in listing.stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return os.path.exists('/dev/nvidia0')


def build_has_cuda():
    """Whether CMake found the CUDA runtime (then the worker counts GPUs
    and julia has its kernel)."""
    try:
        with open(os.path.join(BUILD_DIR, 'CMakeCache.txt')) as f:
            cache = f.read()
    except OSError:
        return False
    found = {}
    for line in cache.splitlines():
        name, _, value = line.partition('=')
        found[name.split(':')[0]] = value
    return all(found.get(name) and not found[name].endswith('NOTFOUND')
               for name in ('KILN_CUDART', 'KILN_CUDART_STATIC'))


class JuliaTest(kiln_harness.KilnTestCase):

    @classmethod
    def setUpClass(cls):
        #  The worker's own slots (no --slots): its GPUs, if it finds any,
        #  and CPU slots; julia asks for GPU-H200, -H100, -A100, then CPU.
        cls.start_stack(worker_args=[])
        cls.deploy_or_dump(example('julia'), 'local/julia')

    def render(self, prompt, width=320, height=200):
        status, headers, obj = self.stack.call(
            '/local/julia', {'prompt': prompt, 'width': width, 'height': height}, timeout=60)
        self.assertEqual(status, 200, obj)
        return obj['image']

    def fetch(self, url):
        parts = urllib.parse.urlsplit(url)
        self.assertEqual('%s://%s' % (parts.scheme, parts.netloc), self.stack.url,
                         'file URL not under KILN_PUBLIC_URL')
        status, headers, body = self.stack.http('GET', parts.path)
        self.assertEqual(status, 200, body[:200])
        self.assertEqual(headers.get('content-type'), 'image/png')
        return body

    def test_image_answer_and_file(self):
        image = self.render('rhino')
        self.assertEqual(image['content_type'], 'image/png')
        self.assertEqual(image['width'], 320)
        self.assertEqual(image['height'], 200)
        self.assertIsInstance(image['file_name'], str)
        self.assertTrue(image['file_name'].endswith('.png'), image['file_name'])
        self.assertIsInstance(image['file_size'], int)
        self.assertTrue(image['url'].startswith(self.stack.url + '/files/'), image['url'])

        png = self.fetch(image['url'])
        self.assertEqual(len(png), image['file_size'])
        width, height, channels, raw_size = parse_png(png)
        self.assertEqual((width, height), (320, 200))
        self.assertIn(channels, (3, 4))
        self.assertEqual(raw_size, height * (1 + width * channels))

    def test_same_prompt_same_image(self):
        first = self.fetch(self.render('a quiet lake')['url'])
        second = self.fetch(self.render('a quiet lake')['url'])
        self.assertEqual(first, second)

    def test_different_prompt_different_image(self):
        first = self.fetch(self.render('rhino')['url'])
        other = self.fetch(self.render('a different animal')['url'])
        self.assertNotEqual(first, other)

    def test_other_sizes(self):
        image = self.render('tall', width=64, height=100)
        width, height, channels, raw_size = parse_png(self.fetch(image['url']))
        self.assertEqual((width, height), (64, 100))
        self.assertEqual(raw_size, height * (1 + width * channels))

    def test_renders_on_the_gpu_when_the_machine_has_one(self):
        status, _, obj = self.stack.call(
            '/local/julia', {'prompt': 'device', 'width': 256, 'height': 256}, timeout=60)
        self.assertEqual(status, 200, obj)
        runners = self.stack.runner_pids('local/julia')
        self.assertTrue(runners, 'no julia runner process')
        visible = {kiln_harness.proc_environ(pid).get('CUDA_VISIBLE_DEVICES')
                   for pid in runners}
        if machine_has_nvidia_gpu() and build_has_cuda():
            self.assertEqual(obj.get('device'), 'cuda', obj)
            self.assertNotIn('', visible, 'a julia runner was placed on a CPU slot')
            self.assertNotIn(None, visible, 'a GPU runner without CUDA_VISIBLE_DEVICES')
        else:
            self.assertEqual(obj.get('device'), 'cpu', obj)
            self.assertEqual(visible, {''}, 'a CPU runner must see no GPU')

    def test_width_out_of_range_is_422(self):
        status, headers, body = self.stack.http(
            'POST', '/local/julia', {'prompt': 'rhino', 'width': 5000, 'height': 200})
        self.assertEqual(status, 422, body[:300])
        obj = json.loads(body)
        self.assertIn('detail', obj)

    def test_unknown_file_is_404(self):
        status, _, body = self.stack.http('GET', '/files/00000000-0000-4000-8000-000000000000')
        self.assertEqual(status, 404, body[:200])


if __name__ == '__main__':
    kiln_harness.main()
