# shellcheck shell=bash
# Shared by scripts/test.sh, scripts/demo.sh and scripts/rig.sh: what xdpmesh needs from Debian 12,
# and how to install it when missing. Source it; it defines functions and variables only.

# The one list of Debian packages the project needs.
#   xsk-rs (AF_XDP) build:  clang llvm libelf-dev zlib1g-dev libpcap-dev pkg-config m4 gcc-multilib
#                           make (libbpf-sys builds the vendored libbpf with it; a minimal
#                           Debian 12 lacks it)
#   rig and network tests:  iproute2 (ip, nstat, ss) iputils-ping nftables ethtool procps (sysctl)
#   traffic and servers:    iperf3 curl nginx-light tcpdump wrk (wrk: dataplane/benches/http.rs)
#   certificate checks:     openssl (control/tests/ca.rs verifies issued chains with it)
#   lint of these scripts:  shellcheck
#   latency harness plots:  fonts-dejavu-core (plotters renders text with DejaVu Sans)
#   benchmark baseline:     haproxy (scripts/bench.sh runs an HAProxy pair doing mTLS)
#   benchmark report:       python3 (scripts/bench/report.py reads the runs' JSON, prints the table)
#   telemetry:              prometheus (dataplane/tests/telemetry_rig.rs scrapes the gateways with it)
#   dashboard:              chromium (dataplane/tests/dashboard_rig.rs renders GET /dashboard headless)
#   HTTP/2 clients:         nghttp2-client (h2load, nghttp: dataplane/tests/h2.rs)
#   HTTP/2 servers:         nghttp2-server (nghttpd), python3-h2 (a server with trailers and
#                           resets: dataplane/tests/h2_upstream.rs)
#   the systemd unit:       systemd (systemd-analyze) man-db (man, for the unit's Documentation=)
#                           (dataplane/tests/systemd_rig.rs verifies scripts/systemd/xdpmesh.service)
#   tables in etcd:         etcd-server etcd-client (dataplane/tests/etcd_rig.rs runs a 3-member
#                           cluster of its own on loopback ports; etcdctl for operators)
#   gRPC:                   python3-grpcio (dataplane/tests/grpc_rig.rs: a Python gRPC server and
#                           client through the pair, run with /usr/bin/python3)
#   instruction counts:     valgrind (scripts/bench-h2-instr.sh: callgrind on a gateway;
#                           benches/README's cachegrind figures)
XM_DEB_PACKAGES=(
  clang llvm libelf-dev zlib1g-dev libpcap-dev pkg-config m4 gcc-multilib make
  iproute2 iputils-ping nftables ethtool procps
  iperf3 curl nginx-light tcpdump wrk
  openssl shellcheck fonts-dejavu-core
  haproxy python3 prometheus chromium
  systemd man-db nghttp2-client nghttp2-server python3-h2
  etcd-server etcd-client python3-grpcio valgrind
)

xm_log() { printf '%s\n' "$*" >&2; }

xm_section() {
  printf '\n==== %s ====\n' "$*"
}

xm_is_root() { [ "$(id -u)" -eq 0 ]; }

# Prints the packages from XM_DEB_PACKAGES that are not installed (one line, space separated).
xm_missing_packages() {
  local missing=() p
  for p in "${XM_DEB_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
      missing+=("$p")
    fi
  done
  echo "${missing[*]}"
}

# Installs whatever is missing from XM_DEB_PACKAGES (needs root when something is missing).
# nginx-light must not start a system nginx on port 80, nor prometheus a system Prometheus on
# port 9090, nor etcd-server a system etcd on ports 2379/2380: the tests and the demo start their own (nginx inside the rig's namespaces, Prometheus
# with its own configuration and storage). A policy-rc.d that refuses service starts is put in place for
# the duration of the install only (unless the machine already has one).
xm_install_deps() {
  local missing
  missing=$(xm_missing_packages)
  if [ -z "$missing" ]; then
    xm_log "deps: all Debian packages present"
    return 0
  fi
  if ! xm_is_root; then
    xm_log "deps: missing Debian packages: $missing"
    xm_log "deps: run as root (sudo) so they can be installed"
    return 1
  fi
  xm_log "deps: installing: $missing"
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# xdpmesh scripts/lib/deps.sh: no service starts during package install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  local rc=0 try
  # A mirror hiccup on a fresh machine should not fail the whole run: up to 3 tries.
  for try in 1 2 3; do
    rc=0
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing \
      || rc=$?
    [ "$rc" -eq 0 ] && break
    xm_log "deps: apt-get failed (exit $rc), try $try of 3"
    sleep 5
  done
  if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi
  if [ "$rc" -ne 0 ]; then
    xm_log "deps: apt-get failed (exit $rc)"
    return "$rc"
  fi
  local unit
  for unit in nginx prometheus etcd; do
    case " $missing " in
      *" $unit "* | *" $unit-light "* | *" $unit-server "*)
        # Where systemd runs, keep the packaged service from starting at boot and holding its port.
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
          systemctl disable --now "$unit" >/dev/null 2>&1 || true
        fi
        ;;
    esac
  done
  missing=$(xm_missing_packages)
  if [ -n "$missing" ]; then
    xm_log "deps: still missing after install: $missing"
    return 1
  fi
}
