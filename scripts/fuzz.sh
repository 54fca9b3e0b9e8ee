#!/usr/bin/env bash
# Runs the cargo-fuzz targets (tcpstack's wire and connection targets, control's tables target,
# mesh's HTTP parser, body framer and preamble targets) for a bounded time each (scripts/test.sh
# calls this).
# cargo fuzz wants nightly-only rustc flags (sanitizers, coverage passes); RUSTC_BOOTSTRAP=1 lets
# the stable toolchain this machine has accept them. FUZZ_SECONDS sets the time per target.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

seconds="${FUZZ_SECONDS:-60}"
# cargo fuzz builds with AddressSanitizer by default; Debian's rustc-web (scripts/lib/toolchain.sh
# installs it on a machine without rustup) ships no ASan runtime, so the link would fail. There,
# fuzz without a sanitizer: panics, overflows and timeouts are still found, memory errors in
# unsafe or C code (aws-lc) are not.
sanitizer=()
host=$(rustc -vV | sed -n 's/^host: //p')
if ! compgen -G "$(rustc --print sysroot)/lib/rustlib/$host/lib/*asan*" >/dev/null; then
    echo "fuzz: $(rustc --version) has no AddressSanitizer runtime: fuzzing with --sanitizer none"
    sanitizer=(--sanitizer none)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

# fuzz CRATE TARGET [SEED_DIR...]: seed dirs (relative to the crate) are read, never written;
# new inputs go to CRATE/fuzz/corpus/TARGET. CRATE/fuzz/regressions/TARGET, when it exists,
# holds the (minimized) inputs of crashes found before: libFuzzer runs every seed first, so each
# is a regression test on every run.
fuzz() {
    local crate="$1" target="$2"
    shift 2
    cd "$root/$crate"
    mkdir -p "fuzz/corpus/$target"
    if [ -d "fuzz/regressions/$target" ]; then
        set -- "$@" "fuzz/regressions/$target"
    fi
    echo "fuzzing $crate/$target for ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "${sanitizer[@]}" "$target" "fuzz/corpus/$target" "$@" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 |
        grep -E "^(Done|INFO: -max_total_time|==[0-9]+==|SUMMARY|thread|Failing input|artifact)" || true
    # cargo fuzz exits non-zero on a crash; pipefail would hide it behind grep, so check artifacts.
    if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
        echo "fuzz target $target found a crash: see $crate/fuzz/artifacts/$target/" >&2
        exit 1
    fi
}

fuzz tcpstack frame
fuzz tcpstack segments
# Seeded with the example tables, so the fuzzer starts from files that validate.
fuzz control tables examples
# mesh (dataplane/mesh): HTTP request and response streams (head round trip, body framing whole
# vs in pieces), the body framer alone, the mesh preamble. Seeded with valid messages (chunked
# bodies, pipelined requests, 100 Continue then 200, ...). mesh pulls in rustls with aws-lc-rs;
# aws-lc-sys's C code is built by cc without the sanitizer flags (RUSTFLAGS only reach rustc), so
# the default AddressSanitizer build links as it is: no `--sanitizer none` needed.
fuzz dataplane/mesh http_request fuzz/seeds/http_request
fuzz dataplane/mesh http_response fuzz/seeds/http_response
fuzz dataplane/mesh body_framer fuzz/seeds/body_framer
fuzz dataplane/mesh preamble fuzz/seeds/preamble
