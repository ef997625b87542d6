#!/usr/bin/env bash
#  install-bench-deps.sh — installs what `make bench` needs besides kiln's
#  own dependencies (scripts/install-deps.sh): the load generator, the
#  peers kiln is measured against, and the chart maker.
#
#      wrk            the HTTP load generator (Debian package wrk)
#      nginx          the HTTP ceiling: `return 200` (nginx-light)
#      gnuplot        the charts in bench/results/ (gnuplot-nox)
#      node, npm      BullMQ, the queue kiln's async API is compared to
#                     (nodejs, npm), and bench/node/node_modules from the
#                     npm registry (`npm ci` against the committed lock)
#
#  A tool counts as present when its command is on the PATH, whatever
#  installed it (nodejs from NodeSource ships its own npm, which Debian's
#  npm package would conflict with). Installs only what is missing, with
#  sudo when not root, so it is quick when everything is there: `make
#  bench` runs it every time.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

#  command:package, in the order they are checked
wanted=(wrk:wrk nginx:nginx-light gnuplot:gnuplot-nox node:nodejs npm:npm)

missing=()
for pair in "${wanted[@]}"; do
    command=${pair%%:*}
    package=${pair#*:}
    #  nginx lives in /usr/sbin, which a user's PATH may lack
    if ! command -v "$command" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$command ]]; then
        missing+=("$package")
    fi
done

if (( ${#missing[@]} > 0 )); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-bench-deps: no apt-get here; the bench needs: ${missing[*]}" >&2
        exit 1
    fi
    echo "install-bench-deps: installing ${missing[*]}" >&2
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "install-bench-deps: missing ${missing[*]}; run this script as root (no sudo here)" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

#  BullMQ and ioredis: the exact versions of the committed lock file.
#  node_modules is kept while the lock has not changed since it was made.
cd "$here/bench/node"
if [[ -f package-lock.json ]]; then
    if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
        echo "install-bench-deps: npm ci in bench/node" >&2
        npm ci --no-audit --no-fund --loglevel=error
    fi
else
    echo "install-bench-deps: npm install in bench/node (writes package-lock.json: commit it)" >&2
    npm install --no-audit --no-fund --loglevel=error
fi
