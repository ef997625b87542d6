#!/usr/bin/env bash
#  install-fuzz-deps.sh — installs what `make fuzz` needs beyond
#  install-deps.sh: clang with libFuzzer (Debian's clang brings its
#  compiler-rt, which holds libFuzzer and the sanitizers).
#
#  Does nothing when clang can already build a libFuzzer target; else
#  installs the clang package (with sudo when not root), then checks
#  again. On a system without dpkg it says what is needed and stops.
set -euo pipefail

s_libfuzzer_works () {
    command -v clang >/dev/null 2>&1 || return 1
    local dir
    dir=$(mktemp -d)
    printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
        'int LLVMFuzzerTestOneInput (const uint8_t *d, size_t n) { (void) d; (void) n; return 0; }' \
        >"$dir/probe.c"
    local rc=0
    clang -fsanitize=fuzzer,address,undefined "$dir/probe.c" -o "$dir/probe" >/dev/null 2>&1 || rc=1
    rm -rf "$dir"
    return $rc
}

if s_libfuzzer_works; then
    exit 0
fi
if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-fuzz-deps: no dpkg here; make fuzz needs clang with libFuzzer (compiler-rt)" >&2
    exit 1
fi

echo "install-fuzz-deps: installing clang (libFuzzer)" >&2
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-fuzz-deps: clang is missing; run this script as root (no sudo here)" >&2
        exit 1
    fi
    sudo=(sudo)
fi
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends clang

if ! s_libfuzzer_works; then
    echo "install-fuzz-deps: clang is installed but cannot link -fsanitize=fuzzer;" \
         "install its compiler-rt (libclang-rt-dev or libclang-common-N-dev)" >&2
    exit 1
fi
