#!/usr/bin/env bash
# xdpmesh's test entry point (README; .ci/run execs it). Run as root on Debian 12:
#   sudo scripts/test.sh
# 1. installs missing Debian packages (scripts/lib/deps.sh); finds a Rust toolchain at least as
#    new as Cargo.toml's rust-version, or installs Debian's rustc-web/cargo-web, and clippy and
#    rustfmt for it (scripts/lib/toolchain.sh);
# 2. shellcheck of the scripts; cargo fmt --check, cargo clippy -D warnings, cargo test for the
#    whole workspace;
# 3. a smoke check of the veth rig (scripts/rig.sh);
# 4. scripts/demo.sh (release build, the mesh on the rig) when CI=true or XDPMESH_DEMO=1;
# 5. scripts/fuzz.sh when it exists and is executable.
# Tests that need root (network namespaces, TAP, veth) skip with a message when not root, except
# when CI=true or XDPMESH_REQUIRE_ROOT_TESTS=1: then they must run, and fail when they cannot.
# Under sudo, cargo runs as root (the tests need it); on exit, whatever root created in the
# checkout (target/, fuzz corpora) and in CARGO_TARGET_DIR is given back to $SUDO_USER.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh
# shellcheck source-path=SCRIPTDIR source=lib/toolchain.sh
. scripts/lib/toolchain.sh

started=$SECONDS
step() {
  xm_section "$* ($((SECONDS - started)) s)"
}

if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
  export XDPMESH_REQUIRE_ROOT_TESTS=1
  # A fresh clone builds once: incremental state would only take disk (gigabytes) from the
  # release and fuzz builds that follow.
  export CARGO_INCREMENTAL=0
fi
# A full disk fails a build with an error far from its cause; say how much there is up front.
df -h . >&2
if [ "${XDPMESH_REQUIRE_ROOT_TESTS:-0}" = "1" ] && ! xm_is_root; then
  xm_log "test.sh: root-only tests are required (CI=true or XDPMESH_REQUIRE_ROOT_TESTS=1) but this is not root"
  exit 1
fi
if ! xm_is_root; then
  xm_log "test.sh: not root: tests that need network namespaces will be skipped (run: sudo scripts/test.sh)"
fi

trap 'xm_give_back . "${CARGO_TARGET_DIR:-target}"' EXIT

step "dependencies"
xm_install_deps
xm_install_toolchain
xm_install_lint_tools
cargo --version
rustc --version

step "shellcheck scripts"
shellcheck -x scripts/*.sh scripts/lib/*.sh .ci/run

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
# Lints come with clippy: a toolchain newer than the newest one checked (XM_RUST_CHECKED) may
# bring new ones. Say so instead of leaving a bare lint failure.
if ! cargo clippy --workspace --all-targets --locked -- -D warnings; then
  if ! xm_version_ge "$XM_RUST_CHECKED" "$XM_RUST_VERSION"; then
    xm_log "test.sh: clippy $XM_RUST_VERSION is newer than the newest checked ($XM_RUST_CHECKED): the"
    xm_log "  lints above may be new in it. Fix them, or use rustc $XM_RUST_CHECKED (README, \"The two commands\")."
  fi
  exit 1
fi

step "cargo test --workspace --all-targets"
cargo test --workspace --all-targets --locked

step "rig smoke check (scripts/rig.sh)"
if ! xm_is_root; then
  echo "skipped: scripts/rig.sh needs root"
elif ip netns list | awk '{print $1}' | grep -qx xm-cli; then
  # Someone's rig is up: look, do not touch.
  bash scripts/rig.sh status
else
  rig_rc=0
  bash scripts/rig.sh up || rig_rc=$?
  if [ "$rig_rc" -eq 0 ]; then bash scripts/rig.sh status || rig_rc=$?; fi
  bash scripts/rig.sh down
  [ "$rig_rc" -eq 0 ]
fi

step "scripts/demo.sh"
if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ] || [ "${XDPMESH_DEMO:-0}" = "1" ]; then
  bash scripts/demo.sh
else
  echo "skipped: the demo (a release build and the mesh on the rig) runs when CI=true or XDPMESH_DEMO=1"
fi

if [ -x scripts/fuzz.sh ]; then
  step "scripts/fuzz.sh"
  bash scripts/fuzz.sh
fi

step "all checks passed"
