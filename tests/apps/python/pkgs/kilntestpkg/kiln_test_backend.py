"""A PEP 517 build backend in the standard library only: it writes the
package's wheel (one pure-Python package, metadata and RECORD) with
zipfile, so pip needs nothing from an index to build it.

With KILN_TEST_BUILD_LOG set, each wheel build appends a line to that
file: the tests count how often pip built the package."""

import base64
import hashlib
import io
import os
import tarfile
import zipfile

NAME = "kilntestpkg"
VERSION = "1.0"
HERE = os.path.dirname(os.path.abspath(__file__))


def _record_hash(data):
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _files():
    """(path in the wheel, bytes) of the package's sources."""
    package = os.path.join(HERE, NAME)
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                yield "%s/%s" % (NAME, name), f.read()


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    log = os.environ.get("KILN_TEST_BUILD_LOG")
    if log:
        with open(log, "a") as f:
            f.write("built %s %s\n" % (NAME, VERSION))
    dist_info = "%s-%s.dist-info" % (NAME, VERSION)
    files = list(_files())
    files.append((dist_info + "/METADATA",
                  ("Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (NAME, VERSION)).encode()))
    files.append((dist_info + "/WHEEL",
                  b"Wheel-Version: 1.0\nGenerator: kiln_test_backend\n"
                  b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    record = "".join("%s,%s,%d\n" % (path, _record_hash(data), len(data)) for path, data in files)
    record += dist_info + "/RECORD,,\n"
    files.append((dist_info + "/RECORD", record.encode()))
    wheel_name = "%s-%s-py3-none-any.whl" % (NAME, VERSION)
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel_name), "w") as wheel:
        for path, data in files:
            wheel.writestr(path, data)
    return wheel_name


def build_sdist(sdist_directory, config_settings=None):
    base = "%s-%s" % (NAME, VERSION)
    sdist_name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, sdist_name), "w:gz") as sdist:
        for name in ("pyproject.toml", "kiln_test_backend.py"):
            sdist.add(os.path.join(HERE, name), arcname="%s/%s" % (base, name))
        for path, data in _files():
            info = tarfile.TarInfo("%s/%s" % (base, path))
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return sdist_name
