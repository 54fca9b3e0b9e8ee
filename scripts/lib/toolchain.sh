# shellcheck shell=bash
# Shared by scripts/test.sh and scripts/demo.sh: find a Rust toolchain new enough for the
# workspace, or install Debian's, and build as the invoking user under sudo. Source it after
# scripts/lib/deps.sh; it defines functions and variables only.
#
# xm_find_toolchain looks, in this order, for a cargo whose rustc is at least the workspace's
# rust-version (Cargo.toml) and takes the first one:
#   1. cargo on PATH;
#   2. ~/.cargo/bin of the user who ran sudo ($SUDO_USER: sudo drops it from PATH);
#   3. ~/.cargo/bin of the current user (root's /root/.cargo/bin under sudo);
#   4. /usr/bin (Debian's rustc-web/cargo-web, once installed).
# When none is new enough, xm_install_toolchain installs Debian 12's rustc-web and cargo-web
# (bookworm-security has 1.96; bookworm's own 1.85 is too old for Cargo.lock) and uses them.
# Debian 12's plain rustc/cargo packages (1.63) are always too old.
#
# The toolchain found is used through its real binaries, not rustup's proxies:
#   XM_RUST_BIN      directory holding that toolchain's cargo and rustc (a rustup toolchain's
#                    bin/ or /usr/bin); the functions put it first on PATH
#   XM_RUST_VERSION  its rustc version, e.g. 1.95.0
#   XM_RUST_KIND     rustup | debian | other
#   XM_RUST_OWNER    the user that found it usable (runs `rustup component add` for it)
#   XM_RUST_FROM     one line saying where it came from
# Under sudo, xm_as_builder runs a command as $SUDO_USER when that user can use the toolchain,
# so target/ stays theirs; xm_give_back hands files root made in the checkout back to them.

XM_RUST_BIN="" XM_RUST_VERSION="" XM_RUST_KIND="" XM_RUST_OWNER="" XM_RUST_FROM=""

# The newest toolchain `cargo clippy --workspace --all-targets -- -D warnings` was checked
# with (Debian 12's rustc-web; rustup's 1.95 too). A newer clippy may bring new lints.
# shellcheck disable=SC2034 # read by scripts/test.sh
XM_RUST_CHECKED=1.96.0

# The workspace's minimum rustc, from [workspace.package] rust-version in Cargo.toml.
xm_rust_required() {
  sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n 1
}

# xm_version_ge A B: whether version A >= B (dotted numbers).
xm_version_ge() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# The user who ran sudo, when this is root under sudo (empty otherwise).
xm_invoker() {
  if xm_is_root && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    echo "$SUDO_USER"
  fi
}

xm_home_of() { getent passwd "$1" | cut -d: -f6; }

# xm_run_as USER CMD...: CMD as USER (root: as is), with USER's HOME and XM_RUST_BIN first on
# PATH. runuser (util-linux) resets PATH and HOME; the rest of the environment (CI,
# CARGO_TARGET_DIR, ...) passes.
xm_run_as() {
  local user=$1 home path
  shift
  path=${XM_RUST_BIN:+$XM_RUST_BIN:}$PATH
  if [ "$user" = "$(id -un)" ]; then
    PATH=$path "$@"
  else
    home=$(xm_home_of "$user")
    runuser -u "$user" -- env HOME="$home" USER="$user" LOGNAME="$user" PATH="$path" "$@"
  fi
}

# xm_probe DIR USER: whether DIR/rustc, run as USER, works; sets XM_PROBE_VERSION and
# XM_PROBE_BIN (the real toolchain's bin/: a rustup proxy resolves to its toolchain).
xm_probe() {
  local dir=$1 user=$2 v sysroot
  XM_PROBE_VERSION="" XM_PROBE_BIN=""
  [ -x "$dir/rustc" ] && [ -x "$dir/cargo" ] || return 1
  # RUSTUP_AUTO_INSTALL=0: a probe never makes rustup download a toolchain.
  v=$(XM_RUST_BIN="" xm_run_as "$user" env RUSTUP_AUTO_INSTALL=0 "$dir/rustc" --version 2>/dev/null) || return 1
  sysroot=$(XM_RUST_BIN="" xm_run_as "$user" env RUSTUP_AUTO_INSTALL=0 "$dir/rustc" --print sysroot 2>/dev/null) || return 1
  v=${v#rustc }
  XM_PROBE_VERSION=${v%% *}
  if [ -x "$sysroot/bin/cargo" ] && [ -x "$sysroot/bin/rustc" ]; then
    XM_PROBE_BIN=$sysroot/bin
  else
    XM_PROBE_BIN=$dir
  fi
}

# xm_find_toolchain: picks the first usable toolchain (see the top); returns 1 when none is
# new enough. Prints what it looked at.
xm_find_toolchain() {
  local need inv invhome cand user label seen="" tried=()
  need=$(xm_rust_required)
  inv=$(xm_invoker)
  invhome=""
  [ -n "$inv" ] && invhome=$(xm_home_of "$inv")
  local cands=()
  if command -v cargo >/dev/null 2>&1; then
    cands+=("$(dirname "$(command -v cargo)")|PATH")
  fi
  [ -n "$invhome" ] && cands+=("$invhome/.cargo/bin|~$inv/.cargo/bin")
  cands+=("${HOME:-/root}/.cargo/bin|~$(id -un)/.cargo/bin")
  cands+=("/usr/bin|/usr/bin")
  for cand in "${cands[@]}"; do
    label=${cand#*|}
    cand=${cand%%|*}
    case " $seen " in *" $cand "*) continue ;; esac
    seen+=" $cand"
    # Under sudo, prefer a toolchain the invoking user can run (they then own the build);
    # else one root can run.
    for user in $inv "$(id -un)"; do
      xm_probe "$cand" "$user" || continue
      if xm_version_ge "$XM_PROBE_VERSION" "$need"; then
        XM_RUST_BIN=$XM_PROBE_BIN XM_RUST_VERSION=$XM_PROBE_VERSION XM_RUST_OWNER=$user
        case $XM_PROBE_BIN in
          */toolchains/*/bin) XM_RUST_KIND=rustup ;;
          /usr/bin) XM_RUST_KIND=debian ;;
          *) XM_RUST_KIND=other ;;
        esac
        XM_RUST_FROM="rustc $XM_RUST_VERSION in $XM_RUST_BIN (found via $label, usable by $user)"
        export PATH="$XM_RUST_BIN:$PATH"
        return 0
      fi
      tried+=("$label: rustc $XM_PROBE_VERSION")
      break
    done
  done
  xm_log "toolchain: no rustc >= $need (Cargo.toml rust-version) found${tried[*]:+; seen: ${tried[*]}}"
  return 1
}

# Debian 12's candidate version of a package (empty when apt knows none).
xm_apt_candidate() {
  apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)' | head -n 1
}

# xm_install_toolchain: finds a toolchain, or installs Debian's rustc-web and cargo-web (root).
xm_install_toolchain() {
  local need cand
  need=$(xm_rust_required)
  if xm_find_toolchain; then
    xm_log "toolchain: $XM_RUST_FROM"
    return 0
  fi
  if ! xm_is_root; then
    xm_log "toolchain: run as root (sudo) to install Debian's rustc-web and cargo-web, or install Rust with rustup"
    return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || true
  cand=$(xm_apt_candidate rustc-web)
  cand=${cand%%+*}
  if [ -z "$cand" ] || ! xm_version_ge "$cand" "$need"; then
    xm_log "toolchain: Debian's rustc-web is ${cand:-not available} here, older than $need."
    xm_log "toolchain: bookworm-security has a newer one; add to /etc/apt/sources.list:"
    xm_log "  deb http://deb.debian.org/debian-security bookworm-security main"
    xm_log "toolchain: then run this again (or install Rust >= $need with rustup)"
    return 1
  fi
  # ca-certificates: cargo fetches crates over https (a minimal Debian lacks the CA bundle).
  xm_log "toolchain: installing Debian's rustc-web and cargo-web $cand (replaces Debian's rustc/cargo 1.63 if installed)"
  xm_apt_install rustc-web cargo-web ca-certificates || return 1
  xm_find_toolchain || return 1
  xm_log "toolchain: $XM_RUST_FROM"
}

# xm_apt_install PKG...: apt-get install, up to 3 tries (a mirror hiccup on a fresh machine).
xm_apt_install() {
  local rc=0 try
  for try in 1 2 3; do
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" || rc=$?
    [ "$rc" -eq 0 ] && return 0
    xm_log "apt-get install $* failed (exit $rc), try $try of 3"
    sleep 5
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || true
  done
  return "$rc"
}

# xm_install_lint_tools: clippy and rustfmt for the toolchain found: `rustup component add`
# for a rustup toolchain (as its owner; needs static.rust-lang.org), Debian's rust-web-clippy
# and rustfmt-web for rustc-web. Returns 1, saying so, when they cannot be had.
xm_install_lint_tools() {
  local want=() name
  PATH="$XM_RUST_BIN:$PATH" cargo fmt --version >/dev/null 2>&1 || want+=(rustfmt)
  PATH="$XM_RUST_BIN:$PATH" cargo clippy --version >/dev/null 2>&1 || want+=(clippy)
  [ "${#want[@]}" -eq 0 ] && return 0
  case $XM_RUST_KIND in
    rustup)
      name=$(basename "$(dirname "$XM_RUST_BIN")")
      xm_log "toolchain: rustup component add ${want[*]} --toolchain $name"
      if ! xm_run_as "$XM_RUST_OWNER" rustup component add "${want[@]}" --toolchain "$name"; then
        xm_log "toolchain: could not add ${want[*]} (rustup needs https://static.rust-lang.org)"
        return 1
      fi
      ;;
    debian)
      if ! xm_is_root; then
        xm_log "toolchain: ${want[*]} missing: sudo apt-get install rust-web-clippy rustfmt-web"
        return 1
      fi
      xm_log "toolchain: installing Debian's rust-web-clippy and rustfmt-web"
      xm_apt_install rust-web-clippy rustfmt-web || return 1
      ;;
    *)
      xm_log "toolchain: cargo ${want[*]} missing for $XM_RUST_BIN; install them for that toolchain"
      return 1
      ;;
  esac
}

# xm_as_builder CMD...: CMD as the user who ran sudo when the toolchain is usable by them and
# they can write the checkout (their target/ stays theirs), else as the current user.
xm_as_builder() {
  local user=${XM_RUST_OWNER:-$(id -un)}
  if [ "$user" != "$(id -un)" ] && ! runuser -u "$user" -- test -w . 2>/dev/null; then
    xm_log "toolchain: $user cannot write $PWD: building as $(id -un)"
    user=$(id -un)
  fi
  xm_run_as "$user" "$@"
}

# xm_give_back DIR...: under sudo, files root made inside each DIR (when DIR belongs to the
# user who ran sudo) are given to that user: a later cargo run without sudo can write them.
xm_give_back() {
  local inv dir
  inv=$(xm_invoker)
  [ -n "$inv" ] || return 0
  for dir in "$@"; do
    [ -d "$dir" ] || continue
    [ "$(stat -c %U "$dir")" = "$inv" ] || [ "$(stat -c %U "$(dirname "$(realpath "$dir")")")" = "$inv" ] || continue
    find "$dir" -xdev -user 0 -exec chown -h "$inv:$(id -gn "$inv")" {} + 2>/dev/null || true
  done
}
