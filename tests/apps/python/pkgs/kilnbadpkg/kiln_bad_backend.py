"""A PEP 517 build backend that refuses to build."""


def _refuse(*args, **kwargs):
    raise RuntimeError("kilnbadpkg cannot be built: it is broken on purpose")


get_requires_for_build_wheel = _refuse
build_wheel = _refuse
build_sdist = _refuse
