#!/usr/bin/env bash
#  install-deps.sh — installs the Debian packages kiln builds and runs with.
#
#  Installs only what is missing (checked with dpkg-query), so it is quiet
#  and quick when everything is there: `make up` and `make check` run it
#  every time. Uses sudo when not root. On a system without dpkg it lists
#  the packages and leaves the installing to you.
set -euo pipefail

packages=(
    build-essential cmake pkg-config
    libzmq3-dev libczmq-dev libhiredis-dev libmsgpack-dev
    libcurl4-openssl-dev libevent-dev libjansson-dev libpng-dev libsodium-dev
    redis-server python3 python3-venv python3-cryptography curl ca-certificates docker-compose
)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-deps: no dpkg here; kiln needs the equivalents of: ${packages[*]}" >&2
    exit 0
fi

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$package")
    fi
done
if (( ${#missing[@]} == 0 )); then
    exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: missing ${missing[*]}; run this script as root (no sudo here)" >&2
        exit 1
    fi
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
