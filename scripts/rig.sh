#!/usr/bin/env bash
# The xdpmesh rig: four network namespaces joined by three veth pairs (DESIGN.md, "The rig").
#
#   xm-cli 10.10.1.2 ── 10.10.1.1 xm-gwa 10.10.2.1 ── 10.10.2.2 xm-gwb 10.10.3.1 ── 10.10.3.2 xm-srv
#
# Interface names are "<this namespace>-<peer namespace>":
#   xm-cli: cli-gwa 10.10.1.2/24             default via 10.10.1.1
#   xm-gwa: gwa-cli 10.10.1.1/24, gwa-gwb 10.10.2.1/24   10.10.3.0/24 via 10.10.2.2, ip_forward=1
#   xm-gwb: gwb-gwa 10.10.2.2/24, gwb-srv 10.10.3.1/24   10.10.1.0/24 via 10.10.2.1, ip_forward=1
#   xm-srv: srv-gwb 10.10.3.2/24             default via 10.10.3.1
# Every veth end has `ethtool -K <if> tx off` (the kernel peer of a veth otherwise sends partial
# checksums that a userspace stack would see as wrong) and IPv6 disabled (keeps captures and
# AF_XDP queues free of router solicitations and MLD). Loopback is up in every namespace.
# The direct path (client -> server by kernel forwarding) works whether or not gateways run.
#
# Usage: scripts/rig.sh up | down | status | mesh [--backend afxdp|kernel] [--poll MODE] [--spin TIME]
#        [--hop h2|http1] | stop
#        | lossy PERMILLE
#   up      create what is missing (idempotent)
#   down    stop processes still running in the rig namespaces, delete them (idempotent)
#   status  show the rig and ping xm-cli -> 10.10.3.2; exit 0 only when the direct path works
#   mesh    start gateway A in xm-gwa and gateway B in xm-gwb from scripts/rig/*.toml, with
#           certificates made by `xdpmesh ca` in the state directory; returns once both are
#           ready (their `ready` line). --backend afxdp (default) or kernel. --spin TIME sets
#           the AF_XDP workers' adaptive polling ceiling (`spin` in the node files; e.g. 200us).
#           --poll sets their `poll` (adaptive, answers or busy; default: hw-config's, adaptive).
#           --hop sets gw-a's `hop_protocol` for gw-b (default: the tables' default, http1).
#           http://10.10.1.1:80/ -> web 10.10.3.2:8080, TCP 10.10.1.1:5001 -> echo 10.10.3.2:5001,
#           TCP 10.10.1.1:5201 -> bulk 10.10.3.2:5201, all across 10.10.2.0/24 inside mTLS;
#           admin API on 127.0.0.1:9901 in each gateway's namespace. Servers are the caller's.
#   stop    stop the gateways (SIGTERM: they drain), idempotent
#   lossy   splice a bridge (namespace xm-br) into the gwa-gwb link, once, and drop PERMILLE
#           of every thousand frames crossing it, each way, with nftables (`numgen random`;
#           this kernel has no netem); `lossy 0` keeps the bridge and drops nothing. Gateways
#           attach their XDP programs to gwa-gwb and gwb-gwa as before; `down` removes xm-br.
#
# Environment: XDPMESH_BIN (default target/debug/xdpmesh, built when missing),
# XM_RIG_STATE (default /run/xdpmesh-rig: certificates, tables, logs, pid files).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh

XM_NAMESPACES=(xm-cli xm-gwa xm-gwb xm-srv)

# One line per veth pair: ns_a if_a addr_a ns_b if_b addr_b
XM_LINKS=(
  "xm-cli cli-gwa 10.10.1.2/24 xm-gwa gwa-cli 10.10.1.1/24"
  "xm-gwa gwa-gwb 10.10.2.1/24 xm-gwb gwb-gwa 10.10.2.2/24"
  "xm-gwb gwb-srv 10.10.3.1/24 xm-srv srv-gwb 10.10.3.2/24"
)

# One line per route: ns destination gateway
XM_ROUTES=(
  "xm-cli default 10.10.1.1"
  "xm-gwa 10.10.3.0/24 10.10.2.2"
  "xm-gwb 10.10.1.0/24 10.10.2.1"
  "xm-srv default 10.10.3.1"
)

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
link_exists() { ip -n "$1" link show dev "$2" >/dev/null 2>&1; }

need_root() {
  if ! xm_is_root; then
    xm_log "rig.sh $1: needs root (network namespaces): sudo scripts/rig.sh $1"
    exit 1
  fi
}

need_tools() {
  local t missing=()
  for t in ip ethtool sysctl ping; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    xm_log "rig.sh: missing tools: ${missing[*]}; installing the project's Debian packages"
    xm_install_deps
  fi
}

setup_end() {
  local ns=$1 ifname=$2 addr=$3
  ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$ifname.disable_ipv6=1"
  ip -n "$ns" addr replace "$addr" dev "$ifname"
  ip netns exec "$ns" ethtool -K "$ifname" tx off >/dev/null
  ip -n "$ns" link set "$ifname" up
}

rig_up() {
  need_root up
  need_tools
  local ns line
  for ns in "${XM_NAMESPACES[@]}"; do
    ns_exists "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  for line in "${XM_LINKS[@]}"; do
    # shellcheck disable=SC2086
    set -- $line
    local ns_a=$1 if_a=$2 addr_a=$3 ns_b=$4 if_b=$5 addr_b=$6
    if link_exists "$ns_a" "$if_a" && ! link_exists "$ns_b" "$if_b"; then
      ip -n "$ns_a" link del "$if_a" # half a pair: start that pair again
    fi
    if ! link_exists "$ns_a" "$if_a"; then
      ip -n "$ns_b" link del "$if_b" 2>/dev/null || true
      ip link add "$if_a" netns "$ns_a" type veth peer name "$if_b" netns "$ns_b"
    fi
    setup_end "$ns_a" "$if_a" "$addr_a"
    setup_end "$ns_b" "$if_b" "$addr_b"
  done
  ip netns exec xm-gwa sysctl -qw net.ipv4.ip_forward=1
  ip netns exec xm-gwb sysctl -qw net.ipv4.ip_forward=1
  # Static neighbours on every link: with AF_XDP gateways running, ARP replies for a gateway's
  # addresses go to the gateway's socket, so the kernel sharing those addresses could not
  # resolve its neighbours and the direct path would break.
  for line in "${XM_LINKS[@]}"; do
    # shellcheck disable=SC2086
    set -- $line
    local mac_a mac_b
    mac_a=$(ip -n "$1" -br link show dev "$2" | awk '{print $3}')
    mac_b=$(ip -n "$4" -br link show dev "$5" | awk '{print $3}')
    ip -n "$1" neigh replace "${6%/*}" lladdr "$mac_b" dev "$2" nud permanent
    ip -n "$4" neigh replace "${3%/*}" lladdr "$mac_a" dev "$5" nud permanent
  done
  for line in "${XM_ROUTES[@]}"; do
    # shellcheck disable=SC2086
    set -- $line
    ip -n "$1" route replace "$2" via "$3"
  done
  echo "rig up: xm-cli 10.10.1.2 -- 10.10.1.1 xm-gwa 10.10.2.1 -- 10.10.2.2 xm-gwb 10.10.3.1 -- 10.10.3.2 xm-srv"
}

# Processes still inside a namespace would keep it alive after `ip netns del`; the rig's
# namespaces hold only what was started for the rig (servers, gateways), so they are stopped.
stop_ns_pids() {
  local ns=$1 pids deadline
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  [ -z "$pids" ] && return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  deadline=$((SECONDS + 5))
  while [ -n "$(ip netns pids "$ns" 2>/dev/null || true)" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
}

rig_down() {
  need_root down
  local ns
  for ns in "${XM_NAMESPACES[@]}" xm-br; do
    if ns_exists "$ns"; then
      stop_ns_pids "$ns"
      ip netns del "$ns"
    fi
  done
  echo "rig down"
}

rig_status() {
  need_root status
  local ns present=0 rc=0
  for ns in "${XM_NAMESPACES[@]}"; do
    if ns_exists "$ns"; then present=$((present + 1)); fi
  done
  if [ "$present" -eq 0 ]; then
    echo "rig is down (no xm-* namespaces)"
    return 1
  fi
  for ns in "${XM_NAMESPACES[@]}"; do
    if ! ns_exists "$ns"; then
      echo "$ns: MISSING"
      rc=1
      continue
    fi
    echo "$ns: forwarding=$(ip netns exec "$ns" sysctl -n net.ipv4.ip_forward)"
    { ip -n "$ns" -br addr show | grep -v '^lo ' || true; } | sed 's/^/  /'
    ip -n "$ns" route show | sed 's/^/  route: /'
  done
  local line
  for line in "${XM_LINKS[@]}"; do
    # shellcheck disable=SC2086
    set -- $line
    if ns_exists "$1" && ! link_exists "$1" "$2"; then echo "$1: link $2 MISSING"; rc=1; fi
    if ns_exists "$4" && ! link_exists "$4" "$5"; then echo "$4: link $5 MISSING"; rc=1; fi
  done
  if [ "$rc" -ne 0 ]; then
    echo "rig is incomplete: run scripts/rig.sh up"
    return 1
  fi
  echo "ping xm-cli -> 10.10.3.2 (direct path, kernel forwarding):"
  if ip netns exec xm-cli ping -c 1 -W 2 10.10.3.2 | sed 's/^/  /'; then
    echo "direct path: OK"
  else
    echo "direct path: FAILED"
    return 1
  fi
}

XM_STATE=${XM_RIG_STATE:-/run/xdpmesh-rig}
XM_BIN=${XDPMESH_BIN:-target/debug/xdpmesh}

xm_bin() {
  if [ ! -x "$XM_BIN" ]; then
    xm_log "rig.sh: building $XM_BIN"
    cargo build -q -p dataplane --bin xdpmesh >&2
  fi
  realpath "$XM_BIN"
}

# The mesh's CA and identities, made once per state directory.
make_identities() {
  local bin=$1 id
  [ -f "$XM_STATE/ca/ca.pem" ] || "$bin" ca init --out "$XM_STATE/ca" >/dev/null
  local dns cert
  for id in sa/client gateway/gw-a gateway/gw-b; do
    cert=$XM_STATE/ids/$id/cert.pem
    # gw-a's certificate also names web.rig.mesh: its ingress-tls listener serves it to
    # clients that check the host name (one from an older state directory is reissued).
    dns=()
    if [ "$id" = gateway/gw-a ]; then
      dns=(--dns web.rig.mesh)
      if [ -f "$cert" ] && ! openssl x509 -noout -ext subjectAltName -in "$cert" |
        grep -q 'DNS:web.rig.mesh'; then
        rm -f "$cert"
      fi
    fi
    [ -f "$cert" ] ||
      "$bin" ca issue --ca "$XM_STATE/ca" --id "spiffe://rig.mesh/$id" "${dns[@]}" --force \
        --out "$XM_STATE/ids/$id" >/dev/null
  done
}

# Starts one gateway; its stdout/stderr go to STATE/NAME.log.
start_gateway() {
  local bin=$1 name=$2 ns=$3 backend=$4
  ip netns exec "$ns" "$bin" run --config "$XM_STATE/$name-node.toml" --backend "$backend" \
    >"$XM_STATE/$name.log" 2>&1 &
  echo $! >"$XM_STATE/$name.pid"
}

wait_ready() {
  local name=$1 deadline=$((SECONDS + 30))
  while ! grep -q ' ready' "$XM_STATE/$name.log" 2>/dev/null; do
    if ! kill -0 "$(cat "$XM_STATE/$name.pid")" 2>/dev/null; then
      xm_log "rig.sh mesh: gateway $name exited:"
      sed 's/^/  /' "$XM_STATE/$name.log" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      xm_log "rig.sh mesh: gateway $name not ready after 30 s:"
      sed 's/^/  /' "$XM_STATE/$name.log" >&2
      return 1
    fi
    sleep 0.1
  done
}

rig_mesh() {
  need_root mesh
  local backend=afxdp spin='' poll='' hop='' ns
  while [ $# -gt 0 ]; do
    case $1 in
      --backend) backend=${2:-}; shift 2 ;;
      --backend=*) backend=${1#*=}; shift ;;
      --spin) spin=${2:-}; shift 2 ;;
      --spin=*) spin=${1#*=}; shift ;;
      --poll) poll=${2:-}; shift 2 ;;
      --poll=*) poll=${1#*=}; shift ;;
      --hop) hop=${2:-}; shift 2 ;;
      --hop=*) hop=${1#*=}; shift ;;
      *) xm_log "rig.sh mesh: unknown argument $1"; exit 64 ;;
    esac
  done
  case $backend in afxdp | kernel) ;; *) xm_log "rig.sh mesh: --backend afxdp|kernel"; exit 64 ;; esac
  case $hop in '' | h2 | http1) ;; *) xm_log "rig.sh mesh: --hop h2|http1"; exit 64 ;; esac
  case $poll in '' | adaptive | answers | busy) ;; *) xm_log "rig.sh mesh: --poll adaptive|answers|busy"; exit 64 ;; esac
  for ns in "${XM_NAMESPACES[@]}"; do
    ns_exists "$ns" || { xm_log "rig.sh mesh: the rig is down: run scripts/rig.sh up"; exit 1; }
  done
  rig_stop >/dev/null
  local bin
  bin=$(xm_bin)
  mkdir -p "$XM_STATE"
  cp scripts/rig/*.toml "$XM_STATE/"
  if [ -n "$spin" ]; then
    # After each interface's cores line; `xdpmesh run` checks the value.
    sed -i "s/^cores = .*/&\nspin = \"$spin\"/" "$XM_STATE"/gw?-node.toml
  fi
  if [ -n "$poll" ]; then
    sed -i "s/^cores = .*/&\npoll = \"$poll\"/" "$XM_STATE"/gw?-node.toml
  fi
  if [ -n "$hop" ]; then
    # After the gw-b peer's identity line in gw-a's tables; `xdpmesh run` checks the value.
    sed -i "s|^identity = \"spiffe://rig.mesh/gateway/gw-b\"\$|&\nhop_protocol = \"$hop\"|" \
      "$XM_STATE"/gwa-tables.toml "$XM_STATE"/split-gwa-tables.toml
  fi
  make_identities "$bin"
  start_gateway "$bin" gwb xm-gwb "$backend"
  start_gateway "$bin" gwa xm-gwa "$backend"
  if ! wait_ready gwb || ! wait_ready gwa; then
    rig_stop >/dev/null
    exit 1
  fi
  echo "mesh up ($backend): http://10.10.1.1/ -> web, 10.10.1.1:5001 -> echo, 10.10.1.1:5201 -> bulk; logs in $XM_STATE"
}

rig_stop() {
  need_root stop
  local name pid deadline
  for name in gwa gwb; do
    [ -f "$XM_STATE/$name.pid" ] || continue
    pid=$(cat "$XM_STATE/$name.pid")
    if kill -TERM "$pid" 2>/dev/null; then
      deadline=$((SECONDS + 15))
      while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$XM_STATE/$name.pid"
  done
  echo "mesh stopped"
}

# The gwa-gwb link through a bridge in xm-br: gwa-gwb -- br-a [br0] br-b -- gwb-gwa.
rig_lossy() {
  need_root lossy
  local permille=${1:-}
  case $permille in '' | *[!0-9]*) xm_log "rig.sh lossy: PERMILLE, 0 to 1000"; exit 64 ;; esac
  [ "$permille" -le 1000 ] || { xm_log "rig.sh lossy: PERMILLE, 0 to 1000"; exit 64; }
  ns_exists xm-gwa || { xm_log "rig.sh lossy: the rig is down: run scripts/rig.sh up"; exit 1; }
  if ! ns_exists xm-br; then
    ip netns add xm-br
    ip -n xm-br link set lo up
    ip -n xm-gwa link del gwa-gwb 2>/dev/null || true
    ip link add gwa-gwb netns xm-gwa type veth peer name br-a netns xm-br
    ip link add gwb-gwa netns xm-gwb type veth peer name br-b netns xm-br
    setup_end xm-gwa gwa-gwb 10.10.2.1/24
    setup_end xm-gwb gwb-gwa 10.10.2.2/24
    ip -n xm-br link add br0 type bridge
    local i
    for i in br-a br-b; do
      ip netns exec xm-br sysctl -qw "net.ipv6.conf.$i.disable_ipv6=1"
      ip netns exec xm-br ethtool -K "$i" tx off >/dev/null
      ip -n xm-br link set "$i" master br0
      ip -n xm-br link set "$i" up
    done
    ip netns exec xm-br sysctl -qw net.ipv6.conf.br0.disable_ipv6=1
    ip -n xm-br link set br0 up
    # The new ends have new MACs: the static neighbours and the routes across this link again.
    local mac_a mac_b
    mac_a=$(ip -n xm-gwa -br link show dev gwa-gwb | awk '{print $3}')
    mac_b=$(ip -n xm-gwb -br link show dev gwb-gwa | awk '{print $3}')
    ip -n xm-gwa neigh replace 10.10.2.2 lladdr "$mac_b" dev gwa-gwb nud permanent
    ip -n xm-gwb neigh replace 10.10.2.1 lladdr "$mac_a" dev gwb-gwa nud permanent
    ip -n xm-gwa route replace 10.10.3.0/24 via 10.10.2.2
    ip -n xm-gwb route replace 10.10.1.0/24 via 10.10.2.1
  fi
  ip netns exec xm-br nft -f - <<NFT
table bridge xm_loss
delete table bridge xm_loss
table bridge xm_loss {
  chain forward {
    type filter hook forward priority 0; policy accept;
    numgen random mod 1000 < $permille counter drop
  }
}
NFT
  echo "rig lossy: gwa-gwb through xm-br, dropping $permille/1000 of frames each way"
}

case "${1:-}" in
  up) rig_up ;;
  down) rig_down ;;
  status) rig_status ;;
  mesh) shift; rig_mesh "$@" ;;
  stop) rig_stop ;;
  lossy) shift; rig_lossy "$@" ;;
  *)
    echo "usage: scripts/rig.sh up | down | status | mesh [--backend afxdp|kernel] | stop | lossy PERMILLE" >&2
    exit 64
    ;;
esac
