#!/usr/bin/env bash
#  run.sh — runs the libFuzzer targets for a set time each (`make fuzz`).
#
#      fuzz/run.sh BUILD_DIR [TARGET...]
#
#  BUILD_DIR is a -DKILN_FUZZ=ON build (its bin/ holds the targets); no
#  TARGET means all of them. Each target runs FUZZ_SECONDS (default 60)
#  on a working corpus, FUZZ_WORK/<target>/corpus (default
#  build dir/fuzz-work), seeded from fuzz/corpus/<target>/ and kept
#  between runs, so each run starts where the last one stopped. A crash,
#  leak, sanitizer report or broken invariant is saved as
#  FUZZ_WORK/<target>/crash-* (or leak-*, timeout-*, oom-*): add it to
#  fuzz/corpus/<target>/ once it is fixed, so the suite replays it.
#  Exits 1 if any target failed. FUZZ_ARGS adds libFuzzer options.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: fuzz/run.sh BUILD_DIR [TARGET...]}
shift
seconds=${FUZZ_SECONDS:-60}
work=${FUZZ_WORK:-$build/fuzz-work}
targets=("$@")
if (( ${#targets[@]} == 0 )); then
    targets=(fuzz_msg fuzz_route fuzz_manifest fuzz_frame fuzz_bundle fuzz_bundle_meta fuzz_json fuzz_redis_url fuzz_auth fuzz_webhook)
fi

failed=()
for target in "${targets[@]}"; do
    binary=$build/bin/$target
    if [[ ! -x $binary ]]; then
        echo "fuzz: $binary is missing (build with -DKILN_FUZZ=ON first)" >&2
        failed+=("$target")
        continue
    fi
    dir=$work/$target
    mkdir -p "$dir/corpus"
    cp -n "$here/corpus/$target/"* "$dir/corpus/" 2>/dev/null || true
    #  Archives and frame streams need room for more than one entry
    max_len=8192
    case $target in
        fuzz_bundle|fuzz_frame) max_len=65536 ;;
    esac
    echo "fuzz: $target for ${seconds}s (log: $dir/log)"
    # shellcheck disable=SC2086
    "$binary" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
        -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$dir/" \
        ${FUZZ_ARGS:-} "$dir/corpus" >"$dir/log" 2>&1
    rc=$?
    if (( rc != 0 )); then
        echo "fuzz: $target FAILED (exit $rc):" >&2
        grep -E "ERROR|invariant broken|SUMMARY|Test unit written" "$dir/log" | head -20 >&2
        failed+=("$target")
    else
        grep -E "^stat::number_of_executed_units|^Done" "$dir/log" | tail -1
    fi
done

if (( ${#failed[@]} > 0 )); then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a finding"
