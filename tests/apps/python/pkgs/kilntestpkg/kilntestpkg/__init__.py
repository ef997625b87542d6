"""What a test app computes with a requirement it could only have from
its virtual environment."""

import hashlib

VERSION = "1.0"


def fingerprint(text):
    """A value the test can compute on its own side."""
    return hashlib.sha256(("kilntestpkg:" + text).encode()).hexdigest()[:16]
