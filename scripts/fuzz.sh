#!/usr/bin/env bash
# Runs tcpstack's cargo-fuzz targets for a bounded time each (scripts/test.sh calls this).
# cargo fuzz wants nightly-only rustc flags (sanitizers, coverage passes); RUSTC_BOOTSTRAP=1 lets
# the stable toolchain this machine has accept them. FUZZ_SECONDS sets the time per target.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

cd tcpstack
for target in frame segments; do
    echo "fuzzing tcpstack/$target for ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 |
        grep -E "^(Done|INFO: -max_total_time|==[0-9]+==|SUMMARY|thread|Failing input|artifact)" || true
    # cargo fuzz exits non-zero on a crash; pipefail would hide it behind grep, so check artifacts.
    if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
        echo "fuzz target $target found a crash: see tcpstack/fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
