#!/usr/bin/env bash
# HTTP/2 clients through the pairs (issue #19 "Benchmark"), as root:
#
#   sudo scripts/bench-h2.sh [--rounds N] [--seconds S] [--rate R] [--h2-servers]
#                            [--hop h2|http1] [--haproxy-hop h2] [--poll MODE] [--no-build]
#                            [--out DIR]
#
# h2load (Debian nghttp2-client) from xm-cli, cleartext HTTP/2 with prior knowledge, against
# three paths measured in interleaved rounds (direct, HAProxy, xdpmesh, direct, ...):
#   direct    h2load -> nginx h2c 10.10.3.2:8081 (kernel forwarding, no proxy)
#   haproxy   h2load -> haproxy A h2c 10.10.1.1:82 -> mTLS, HTTP/1.1 reused -> haproxy B
#             -> nginx 10.10.3.2:8080 (nbthread 1 each, scripts/bench/haproxy-*.cfg)
#   xdpmesh   h2load -> gateway A h2c 10.10.1.1:80 -> mTLS, HTTP/2 streams (the multiplexed
#             hop, `hop_protocol = "h2"`; --hop http1: HTTP/1.1 on pooled hop connections, the
#             tables' default) -> gateway B -> nginx 10.10.3.2:8080 (AF_XDP, scripts/rig.sh mesh)
# --h2-servers: the servers speak HTTP/2 too (nginx h2c 10.10.3.2:8081 behind both pairs), and
# HAProxy speaks h2 on both sides of its hop (ALPN h2 in the mTLS, frontends :83); gateway B
# reaches nginx by h2c (`upstream_protocol = "h2c"`, the rig's tables with web moved to 8081).
# Without it HAProxy's hop is HTTP/1.1 on reused connections, or with --haproxy-hop h2 HTTP/2
# (ALPN h2 in the mTLS, frontends :84) to HTTP/1.1 servers: HAProxy speaks h2 to the clients
# and between the gateways, and both pairs reach the same nginx HTTP/1.1 port.
# --poll MODE: the AF_XDP gateways' `poll` (adaptive, answers, busy; default: the node files',
# adaptive), as scripts/bench.sh's --gw-poll.
# Per round and path: req/s with 32 streams over 4 connections (h2load -c4 -m8, --seconds
# each, after a 1 s warm-up), then the latency at a fixed rate (--rate req/s in total, 5 s;
# every request's duration from h2load's --log-file: p50 and p99). Prints the sums and
# medians, the ratios to HAProxy, and the added p50 over the direct path; saves
# bench-h2-STAMP.txt under --out (default benches/results). About 2 minutes with the defaults
# (3 rounds of 5 s) after the build.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh
# shellcheck source-path=SCRIPTDIR source=lib/bench.sh
. scripts/lib/bench.sh

ROUNDS=3
SECONDS_EACH=5
RATE=2000
BUILD=1
H2_SERVERS=0
HAPROXY_HOP=
GW_POLL=
HOP_PROTO=h2
OUT=benches/results
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=${2:-}; shift 2 ;;
    --seconds) SECONDS_EACH=${2:-}; shift 2 ;;
    --rate) RATE=${2:-}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --h2-servers) H2_SERVERS=1; shift ;;
    --hop) HOP_PROTO=${2:-}; shift 2 ;;
    --haproxy-hop) HAPROXY_HOP=${2:-}; shift 2 ;;
    --poll) GW_POLL=${2:-}; shift 2 ;;
    --out) OUT=${2:-}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) xm_log "bench-h2.sh: unknown argument $1 (see --help)"; exit 64 ;;
  esac
done
case $HOP_PROTO in h2 | http1) ;; *) xm_log "bench-h2.sh: --hop h2|http1"; exit 64 ;; esac
case $HAPROXY_HOP in '') ;; h2)
  [ "$H2_SERVERS" -eq 0 ] || { xm_log "bench-h2.sh: --h2-servers already gives HAProxy an h2 hop"; exit 64; } ;;
  *) xm_log "bench-h2.sh: --haproxy-hop h2"; exit 64 ;;
esac
for v in "$ROUNDS" "$SECONDS_EACH" "$RATE"; do
  case $v in '' | *[!0-9]* | 0) xm_log "bench-h2.sh: --rounds, --seconds and --rate take positive integers"; exit 64 ;; esac
done
if ! xm_is_root; then
  xm_log "bench-h2.sh needs root (network namespaces, XDP): sudo scripts/bench-h2.sh"
  exit 1
fi

export XM_RIG_STATE=${XM_RIG_STATE:-/run/xdpmesh-bench-h2}
export XDPMESH_BIN=${XDPMESH_BIN:-target/release/xdpmesh}
STATE=$XM_RIG_STATE
STAMP=$(date -u +%Y%m%d-%H%M)

xm_section "dependencies and build"
xm_install_deps
if [ "$BUILD" -eq 1 ]; then
  cargo build --release --locked -p dataplane --bin xdpmesh
fi
[ -x "$XDPMESH_BIN" ] || { xm_log "bench-h2.sh: $XDPMESH_BIN missing"; exit 1; }

if pgrep -f "xdpmesh run" >/dev/null 2>&1; then
  xm_log "bench-h2.sh: an 'xdpmesh run' is running (the rig is in use); stop it first"
  exit 1
fi

RAW=$(mktemp -d /tmp/xm-bench-h2.XXXXXX)
PIDS=()
RIG_WAS_UP=0
PORT_RANGES=()
cleanup() {
  local rc=$? pid line
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  bash scripts/rig.sh stop >/dev/null 2>&1 || true
  if [ "$RIG_WAS_UP" -eq 0 ]; then
    bash scripts/rig.sh down >/dev/null 2>&1 || true
  else
    for line in "${PORT_RANGES[@]}"; do
      # shellcheck disable=SC2086 # "ns lo hi"
      set -- $line
      ip netns exec "$1" sysctl -qw net.ipv4.ip_local_port_range="$2 $3" 2>/dev/null || true
    done
  fi
  if [ "$rc" -ne 0 ]; then
    xm_log "bench-h2.sh: failed (exit $rc); raw results kept in $RAW, logs in $STATE"
  else
    rm -rf "$RAW"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


xm_section "the rig, the servers and both pairs"
if ip netns list | awk '{print $1}' | grep -qx xm-cli; then RIG_WAS_UP=1; fi
bash scripts/rig.sh up
for ns in xm-gwa xm-gwb; do
  PORT_RANGES+=("$ns $(ip netns exec "$ns" sysctl -n net.ipv4.ip_local_port_range)")
  # HAProxy's kernel sockets stay below the AF_XDP gateways' ephemeral range.
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="10000 32767"
done
mkdir -p "$STATE/nginx-tmp" "$STATE/haproxy"
sed "s|@STATE@|$STATE|g" scripts/bench/nginx.conf >"$STATE/nginx.conf"
ip netns exec xm-srv nginx -q -e "$STATE/nginx-error.log" -p "$STATE" -c "$STATE/nginx.conf" &
PIDS+=($!)
xm_wait_listen xm-srv 8080
xm_wait_listen xm-srv 8081
bash scripts/rig.sh mesh --backend afxdp --hop "$HOP_PROTO" ${GW_POLL:+--poll "$GW_POLL"}
for id in "sa/client client" "gateway/gw-b gwb"; do
  # shellcheck disable=SC2086
  set -- $id
  (umask 077 && cat "$STATE/ids/$1/cert.pem" "$STATE/ids/$1/key.pem" >"$STATE/haproxy/$2.pem")
done
sed "s|@STATE@|$STATE|g" scripts/bench/haproxy-a.cfg >"$STATE/haproxy/a.cfg"
sed "s|@STATE@|$STATE|g" scripts/bench/haproxy-b.cfg >"$STATE/haproxy/b.cfg"
haproxy -c -q -f "$STATE/haproxy/a.cfg"
haproxy -c -q -f "$STATE/haproxy/b.cfg"
ip netns exec xm-gwb haproxy -db -f "$STATE/haproxy/b.cfg" >"$STATE/haproxy/b.log" 2>&1 &
PIDS+=($!)
ip netns exec xm-gwa haproxy -db -f "$STATE/haproxy/a.cfg" >"$STATE/haproxy/a.log" 2>&1 &
PIDS+=($!)
xm_wait_listen xm-gwb 81
xm_wait_listen xm-gwa 82

TARGETS=("direct http://10.10.3.2:8081/" "haproxy http://10.10.1.1:82/" "xdpmesh http://10.10.1.1/")
HOP="servers HTTP/1.1; HAProxy's hop HTTP/1.1, xdpmesh's hop $HOP_PROTO"
if [ "$H2_SERVERS" -eq 1 ]; then
  # web's endpoint moves to nginx's h2c port on both gateways; B speaks h2c to it.
  sed 's|10.10.3.2:8080|10.10.3.2:8081|' scripts/rig/gwa-tables.toml >"$STATE/h2-gwa-tables.toml"
  sed 's|{ address = "10.10.3.2:8080" }\]|{ address = "10.10.3.2:8081" }]\nupstream_protocol = "h2c"|' \
    scripts/rig/gwb-tables.toml >"$STATE/h2-gwb-tables.toml"
  grep -q 'upstream_protocol = "h2c"' "$STATE/h2-gwb-tables.toml"
  for gw in gwb gwa; do
    code=$(ip netns exec "xm-$gw" curl -s -o /dev/stderr -w '%{http_code}' -X PUT \
      --data-binary "@$STATE/h2-$gw-tables.toml" http://127.0.0.1:9901/tables)
    [ "$code" = 200 ] || { xm_log "bench-h2.sh: gateway $gw refused the h2c tables ($code)"; exit 1; }
  done
  xm_wait_listen xm-gwb 83
  xm_wait_listen xm-gwa 83
  TARGETS=("direct http://10.10.3.2:8081/" "haproxy http://10.10.1.1:83/" "xdpmesh http://10.10.1.1/")
  HOP="servers HTTP/2 (h2c); HAProxy's hop HTTP/2 (ALPN h2), xdpmesh's hop $HOP_PROTO"
elif [ "$HAPROXY_HOP" = h2 ]; then
  xm_wait_listen xm-gwb 84
  xm_wait_listen xm-gwa 84
  TARGETS=("direct http://10.10.3.2:8081/" "haproxy http://10.10.1.1:84/" "xdpmesh http://10.10.1.1/")
  HOP="servers HTTP/1.1; HAProxy's hop HTTP/2 (ALPN h2), xdpmesh's hop $HOP_PROTO"
fi
[ -z "$GW_POLL" ] || HOP="$HOP; gateways' poll $GW_POLL"
for t in "${TARGETS[@]}"; do
  # shellcheck disable=SC2086
  set -- $t
  if ! ip netns exec xm-cli curl -sf --max-time 5 --http2-prior-knowledge -o /dev/null "$2"; then
    xm_log "bench-h2.sh: $1 ($2) does not answer over HTTP/2"
    exit 1
  fi
done

# h2load's summary line "finished in ..., N req/s, ..." → N; fails unless every request
# succeeded.
reqs_per_s() {
  local out=$1
  grep -q '^requests: .* 0 failed, 0 errored, 0 timeout' "$out" || {
    xm_log "bench-h2.sh: h2load reported failures:"
    sed 's/^/  /' "$out" >&2
    return 1
  }
  sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$out"
}

xm_section "measuring: $ROUNDS rounds x ${SECONDS_EACH}s, 4 connections x 8 streams; latency at $RATE req/s"
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    set -- $t
    ip netns exec xm-cli h2load -c4 -m8 -D "$SECONDS_EACH" --warm-up-time=1 "$2" >"$RAW/$1-$r-max.txt" 2>&1
    rps=$(reqs_per_s "$RAW/$1-$r-max.txt")
    # Fixed rate: --rps is per connection.
    ip netns exec xm-cli h2load -c4 -m8 --rps=$((RATE / 4)) -D 5 --log-file="$RAW/$1-$r.log" "$2" \
      >"$RAW/$1-$r-rate.txt" 2>&1
    reqs_per_s "$RAW/$1-$r-rate.txt" >/dev/null
    # Log lines: start (µs since epoch), status, duration (µs).
    read -r p50 p99 < <(awk '{print $3}' "$RAW/$1-$r.log" | sort -n |
      awk '{v[NR]=$1} END {print v[int(NR*0.50)+1], v[int(NR*0.99)+1]}')
    echo "$1 $r $rps $p50 $p99" | tee -a "$RAW/rounds.txt"
  done
done

mkdir -p "$OUT"
REPORT="$OUT/bench-h2-$STAMP.txt"
python3 - "$RAW/rounds.txt" "$ROUNDS" "$SECONDS_EACH" "$RATE" "$HOP" >"$REPORT" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
rounds, secs, rate, hop = sys.argv[2:6]
print(hop)
by = {}
for name, _, rps, p50, p99 in rows:
    by.setdefault(name, []).append((float(rps), int(p50), int(p99)))
print(f"h2load -c4 -m8 (32 streams over 4 connections), {rounds} interleaved rounds of {secs} s; "
      f"latency at {rate} req/s (5 s each round)")
print(f"{'path':10} {'req/s (sum)':>12} {'req/s median':>13} {'p50 µs':>8} {'p99 µs':>8}")
for name, v in by.items():
    print(f"{name:10} {sum(x[0] for x in v):12.0f} {statistics.median(x[0] for x in v):13.0f} "
          f"{statistics.median(x[1] for x in v):8.0f} {statistics.median(x[2] for x in v):8.0f}")
d, h, x = by["direct"], by["haproxy"], by["xdpmesh"]
med = lambda v, i: statistics.median(e[i] for e in v)
print()
print(f"xdpmesh / HAProxy req/s (sums): {sum(e[0] for e in x) / sum(e[0] for e in h):.2f}  (goal >= 1.5)")
added_h, added_x = med(h, 1) - med(d, 1), med(x, 1) - med(d, 1)
ratio = added_x / added_h if added_h > 0 else float("nan")
print(f"added p50 over direct: HAProxy {added_h:.0f} µs, xdpmesh {added_x:.0f} µs, ratio {ratio:.2f}  (goal <= 0.5)")
EOF
cat "$REPORT"
echo "saved: $REPORT"
