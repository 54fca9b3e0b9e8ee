#!/usr/bin/env bash
# The mesh benchmark (issue #5 "Benchmark", issue #6 "scripts/bench.sh"), as root:
#
#   sudo scripts/bench.sh [--quick] [--no-build] [--wait SECONDS] [--out DIR] [--policies]
#
# Brings the rig up (scripts/rig.sh) and measures, in one run, four paths from xm-cli to xm-srv:
#   direct          client -> server by kernel forwarding, no proxy
#   HAProxy pair    haproxy A (xm-gwa, 10.10.1.1:81/5002/5202) -> mTLS -> haproxy B (xm-gwb)
#                   -> server; nbthread 1 each; certificates from the mesh's own CA
#   xdpmesh pair    gateway A -> mTLS -> gateway B (scripts/rig.sh mesh), --backend kernel
#   xdpmesh pair    the same, --backend afxdp
# in two phases. Phase "kernel": direct, HAProxy and xdpmesh on kernel sockets, no XDP program
# anywhere. Phase "afxdp": direct, HAProxy and xdpmesh on AF_XDP (the gateways' XDP programs are
# attached to all four gateway-side veth ends, which also changes the other two paths: the
# senders' veth peers lose TSO). Within a phase the targets are measured in interleaved rounds
# (A, B, C, A, B, C, ...) so they share the machine's load alike; both pairs run at once on
# different ports (HAProxy's kernel sockets get ports 10000-32767 in xm-gwa/xm-gwb so that the
# AF_XDP gateways' ephemeral range 32768-60999 stays theirs).
#
# Per phase and path:
#   TCP 64 B request/response latency at each rate (xdpmesh-bench, 16 connections, open loop)
#   HTTP keep-alive GET latency at each rate (xdpmesh-bench, 32 connections)
#   CPU per 1,000 requests of each pair at each fixed rate: its two processes' user + system
#   time over exactly its own measured windows of the two runs above (xdpmesh-bench --cpu-of;
#   issue #21), printed next to the added p50 of the same runs
#   HTTP req/s, 32 keep-alive connections (wrk -t1 -c32, closed loop: the maximum)
#   one-stream bulk Gbit/s (iperf3, one stream)
# Servers in xm-srv: nginx 10.10.3.2:8080 (one worker, `return 200`), the harness's echo server
# 10.10.3.2:5001 (`xdpmesh-bench serve echo`, a thread per connection), iperf3 -s 10.10.3.2:5201.
#
# Prints the table (latency added per pair and per hop against the direct path and against the
# HAProxy pair, and the goals of issue #5), and saves under --out (default benches/results):
#   bench-STAMP.json  machine (nproc, CPU model, kernel), load, every figure, the goals
#   bench-STAMP.txt   the printed table
#   bench-STAMP-MODE-RATE.svg   percentile plots, all six runs of a mode and rate on one chart
#
# --quick     rates 1k and 10k, 2 rounds of short runs (about 6 minutes instead of 18)
# --no-build  use the existing target/release binaries
# --wait S    if another run (demo, tests) is using the rig, wait up to S seconds for it
#             (default 0: fail at once); the rig namespaces are shared, one user at a time
# --gw-spin T the AF_XDP gateways' adaptive polling ceiling (node file `spin`, e.g. 200us; default:
#             the node files' own, i.e. hw-config's 2ms). The window starts at 200us and grows
#             toward T while requests keep arriving within it, so the gateways poll while their
#             own traffic flows and sleep during the other paths' rounds; T = 200us is a fixed
#             200us window.
# --gw-poll M the AF_XDP gateways' `poll` (adaptive, answers, busy; default: the node files', i.e.
#             adaptive). answers: poll only while an upstream answer is owed, at most --gw-spin.
# --policies  instead of the above, the cost of request policies (issue #15): only the xdpmesh
#             pair, once per backend (kernel, then afxdp), carries web at two paths that differ
#             only by a `retries` table with nothing to retry (scripts/rig/gwa-tables.toml: the
#             route "web-retry" for /retry, every key at its default; the route "web" for the
#             rest, no policy), measured interleaved:
#               plain        http://10.10.1.1/
#               retries      http://10.10.1.1/retry/
#               plain-again  http://10.10.1.1/ again: an A/A control, its ratio to plain is noise
#             the HTTP keep-alive GET latency at each rate and wrk req/s and p99 as above (no
#             HAProxy, no TCP, no bulk). Checks first that only /retry/ answers carry
#             x-xdpmesh-attempts; reports gateway A's retry counters after each backend (nothing
#             failed: they stay 0). Prints a table per backend with the ratios to plain; saves
#             under --out bench-STAMP-policies.{txt,json}, bench-STAMP-policies-BACKEND-http-RATE.svg.
#             Only nginx runs in xm-srv. About 9 minutes (--quick: 2) after the build.
# Environment: XDPMESH_BIN, XDPMESH_BENCH_BIN (default target/release/...), XM_RIG_STATE
# (default /run/xdpmesh-bench).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh
# shellcheck source-path=SCRIPTDIR source=lib/bench.sh
. scripts/lib/bench.sh

QUICK=0
BUILD=1
WAIT=0
GW_SPIN=
GW_POLL=
OUT=benches/results
POLICIES=0
ARGS="$*"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --wait) WAIT=${2:-}; shift 2 ;;
    --gw-spin) GW_SPIN=${2:-}; shift 2 ;;
    --gw-poll) GW_POLL=${2:-}; shift 2 ;;
    --out) OUT=${2:-}; shift 2 ;;
    --policies) POLICIES=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) xm_log "bench.sh: unknown argument $1 (see --help)"; exit 64 ;;
  esac
done
case $WAIT in '' | *[!0-9]*) xm_log "bench.sh: --wait takes whole seconds"; exit 64 ;; esac

if ! xm_is_root; then
  xm_log "bench.sh needs root (network namespaces, XDP): sudo scripts/bench.sh"
  exit 1
fi

if [ "$QUICK" -eq 1 ]; then
  RATES=(1000 10000)
  DURATION=6s # per target, split over the rounds
  WARMUP=500ms
  ROUNDS=2
  WRK_SECONDS=3
  IPERF_SECONDS=3
else
  RATES=(1000 10000 max)
  DURATION=15s
  WARMUP=1s
  ROUNDS=3
  WRK_SECONDS=6
  IPERF_SECONDS=5
fi
# "max": ask more than anything here carries; the achieved rate is the path's (or the
# harness's) ceiling and the percentiles then include the queueing.
MAX_RATE=100000
TCP_CONNS=16
HTTP_CONNS=32

export XM_RIG_STATE=${XM_RIG_STATE:-/run/xdpmesh-bench}
export XDPMESH_BIN=${XDPMESH_BIN:-target/release/xdpmesh}
BENCH_BIN=${XDPMESH_BENCH_BIN:-target/release/xdpmesh-bench}
STATE=$XM_RIG_STATE
STAMP=$(date -u +%Y%m%d-%H%M)
[ "$QUICK" -eq 1 ] && STAMP=$STAMP-quick

xm_section "dependencies and build"
xm_install_deps
if [ "$BUILD" -eq 1 ]; then
  cargo build --release --locked -p dataplane --bin xdpmesh -p benches --bin xdpmesh-bench
fi
for b in "$XDPMESH_BIN" "$BENCH_BIN"; do
  [ -x "$b" ] || { xm_log "bench.sh: $b missing (build it, or drop --no-build)"; exit 1; }
done
BENCH_BIN=$(realpath "$BENCH_BIN")

# --- one user of the rig at a time -------------------------------------------------------------
rig_busy() {
  local ns
  pgrep -f "xdpmesh run" >/dev/null 2>&1 && return 0
  for ns in xm-cli xm-gwa xm-gwb xm-srv; do
    [ -n "$(ip netns pids "$ns" 2>/dev/null || true)" ] && return 0
  done
  return 1
}
deadline=$((SECONDS + WAIT))
while rig_busy; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    xm_log "bench.sh: the rig is in use (processes in xm-* namespaces or an 'xdpmesh run');"
    xm_log "bench.sh: wait for it to finish, or pass --wait SECONDS"
    exit 1
  fi
  sleep 2
done

RAW=$(mktemp -d /tmp/xm-bench.XXXXXX)
PIDS=()
RIG_WAS_UP=0
PORT_RANGES=()
HAPROXY_A_PID=
HAPROXY_B_PID=
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
    xm_log "bench.sh: failed (exit $rc); raw results kept in $RAW, gateway logs in $STATE"
  else
    rm -rf "$RAW"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until something listens on TCP ADDR:PORT in namespace NS (deadline: 15 s).

xm_section "the rig and the servers"
if ip netns list | awk '{print $1}' | grep -qx xm-cli; then RIG_WAS_UP=1; fi
bash scripts/rig.sh up
for ns in xm-gwa xm-gwb; do
  PORT_RANGES+=("$ns $(ip netns exec "$ns" sysctl -n net.ipv4.ip_local_port_range)")
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="10000 32767"
done
mkdir -p "$STATE/nginx-tmp" "$STATE/haproxy"
sed "s|@STATE@|$STATE|g" scripts/bench/nginx.conf >"$STATE/nginx.conf"
ip netns exec xm-srv nginx -q -e "$STATE/nginx-error.log" -p "$STATE" -c "$STATE/nginx.conf" &
PIDS+=($!)
if [ "$POLICIES" -eq 0 ]; then
  ip netns exec xm-srv "$BENCH_BIN" serve echo --listen 10.10.3.2:5001 >"$STATE/echo.log" 2>&1 &
  PIDS+=($!)
  ip netns exec xm-srv iperf3 -s -B 10.10.3.2 -p 5201 >"$STATE/iperf3.log" 2>&1 &
  PIDS+=($!)
fi
xm_wait_listen xm-srv 8080
if [ "$POLICIES" -eq 0 ]; then
  xm_wait_listen xm-srv 5001
  xm_wait_listen xm-srv 5201
fi

( while :; do echo "$(date +%s) $(cut -d' ' -f1 /proc/loadavg)"; sleep 5; done ) >"$RAW/load.txt" &
PIDS+=($!)

# HAProxy wants certificate and key in one PEM; the mesh CA made by `rig.sh mesh` signs both.
start_haproxy() {
  local id
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
  HAPROXY_B_PID=$!
  ip netns exec xm-gwa haproxy -db -f "$STATE/haproxy/a.cfg" >"$STATE/haproxy/a.log" 2>&1 &
  PIDS+=($!)
  HAPROXY_A_PID=$!
  xm_wait_listen xm-gwb 5202
  xm_wait_listen xm-gwa 5202
}

# CPU time (user + system, clock ticks) of process PID so far, or "-" if it is gone;
# `ip netns exec` execs its program, so the pids of the gateways and HAProxies started
# through it are theirs.
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -; return; }
  # shellcheck disable=SC2086 # fields after the command name, which may hold spaces
  set -- ${stat##*) }
  echo $((${12} + ${13}))
}

# The proxies' CPU time: "NAME PID TICKS" per line. Taken before and after the fixed-rate
# latency runs of a phase (TCP and HTTP at each rate but "max"), where every pair carries the
# same requests, so their CPU seconds compare: what a polling gateway costs shows here.
# (wrk, iperf3 and "max" run each path as fast as it goes: more requests for a faster pair.)
proxy_cpu() {
  local name pid
  for name in gw-a:"$(cat "$STATE/gwa.pid" 2>/dev/null || echo -)" \
    gw-b:"$(cat "$STATE/gwb.pid" 2>/dev/null || echo -)" \
    haproxy-a:"${HAPROXY_A_PID:--}" haproxy-b:"${HAPROXY_B_PID:--}"; do
    pid=${name#*:}
    echo "${name%%:*} $pid $(cpu_ticks "$pid")"
  done
}

# xdpmesh-bench's --cpu-of arguments, one per line, for the targets "NAME:ROLE" given that
# are a pair (HAProxy's two processes; the two gateways): its runs' CPU per 1,000 requests.
cpu_of_args() {
  local t pids
  for t in "$@"; do
    case ${t#*:} in
      haproxy) pids=$HAPROXY_A_PID,$HAPROXY_B_PID ;;
      xdpmesh) pids=$(cat "$STATE/gwa.pid" 2>/dev/null),$(cat "$STATE/gwb.pid" 2>/dev/null) ;;
      *) continue ;;
    esac
    case $pids in ,* | *, | *,,*) continue ;; esac
    printf '%s\n' --cpu-of "${t%%:*}=$pids"
  done
}

# Ends the CPU count of phase $1 and its wall time since $2 (SECONDS); once per phase.
proxy_cpu_end() {
  [ -f "$RAW/$1/cpu-end.txt" ] && return 0
  proxy_cpu >"$RAW/$1/cpu-end.txt"
  echo "$((SECONDS - $2))" >"$RAW/$1/seconds.txt"
}

# measure PHASE "NAME ROLE TCP_TARGET HTTP_URL BULK_HOST BULK_PORT" ...
measure() {
  local phase=$1 rate r asked line name
  shift
  local names=() tcp=() http=() bulk=() roles=()
  for line in "$@"; do
    # shellcheck disable=SC2086
    set -- $line
    names+=("$1")
    roles+=("$1:$2")
    tcp+=("$1=$3")
    http+=("$1=$4")
    bulk+=("$1 $5 $6")
  done
  mkdir -p "$RAW/$phase"
  proxy_cpu >"$RAW/$phase/cpu-start.txt"
  local started=$SECONDS
  for rate in "${RATES[@]}"; do
    # "max" runs each path as fast as it goes: not the same requests for every path.
    [ "$rate" = max ] && proxy_cpu_end "$phase" "$started"
    asked=$rate
    [ "$rate" = max ] && asked=$MAX_RATE
    # At a fixed rate every pair gets the same requests: charge each pair's runs with its
    # two processes' CPU (issue #21: CPU per 1,000 requests). "max" serves more on a faster pair.
    local cpu=()
    [ "$rate" = max ] || mapfile -t cpu < <(cpu_of_args "${roles[@]}")
    if [ "$POLICIES" -eq 0 ]; then
      echo "-- $phase: TCP 64 B echo, $asked req/s, $TCP_CONNS connections, $ROUNDS rounds"
      ip netns exec xm-cli "$BENCH_BIN" run --mode tcp --compare "${tcp[@]}" -r "$asked" -c "$TCP_CONNS" -d "$DURATION" \
        --warmup "$WARMUP" --rounds "$ROUNDS" --no-progress "${cpu[@]}" --save "$RAW/$phase/tcp-$rate.json" \
        | tee -a "$RAW/$phase/harness.txt"
    fi
    echo "-- $phase: HTTP keep-alive GET, $asked req/s, $HTTP_CONNS connections, $ROUNDS rounds"
    ip netns exec xm-cli "$BENCH_BIN" run --mode http --compare "${http[@]}" -r "$asked" -c "$HTTP_CONNS" -d "$DURATION" \
      --warmup "$WARMUP" --rounds "$ROUNDS" --no-progress "${cpu[@]}" --save "$RAW/$phase/http-$rate.json" \
      | tee -a "$RAW/$phase/harness.txt"
  done
  proxy_cpu_end "$phase" "$started"
  for r in $(seq 1 "$ROUNDS"); do
    for line in "${http[@]}"; do
      name=${line%%=*}
      echo "-- $phase round $r/$ROUNDS: wrk -t1 -c32 -d${WRK_SECONDS}s ${line#*=} ($name)"
      ip netns exec xm-cli wrk -t1 -c32 -d"${WRK_SECONDS}s" --timeout 2s --latency "${line#*=}" \
        >"$RAW/$phase/wrk-$name-r$r.txt" 2>&1 || true
      grep -E 'Requests/sec|errors|Non-2xx' "$RAW/$phase/wrk-$name-r$r.txt" | sed 's/^/   /' || true
    done
    [ "$POLICIES" -eq 1 ] && continue
    for line in "${bulk[@]}"; do
      # shellcheck disable=SC2086
      set -- $line
      echo "-- $phase round $r/$ROUNDS: iperf3 -c $2 -p $3 -t $IPERF_SECONDS, one stream ($1)"
      ip netns exec xm-cli timeout $((IPERF_SECONDS + 20)) iperf3 -c "$2" -p "$3" -t "$IPERF_SECONDS" -J \
        >"$RAW/$phase/iperf-$1-r$r.json" 2>/dev/null || true
      # iperf3's server takes one test at a time: let it finish with this one.
      sleep 0.5
    done
  done
}

KERNEL_TARGETS=(
  "direct-k direct 10.10.3.2:5001 http://10.10.3.2:8080/ 10.10.3.2 5201"
  "haproxy-k haproxy 10.10.1.1:5002 http://10.10.1.1:81/ 10.10.1.1 5202"
  "xdpmesh-kernel xdpmesh 10.10.1.1:5001 http://10.10.1.1/ 10.10.1.1 5201"
)
AFXDP_TARGETS=(
  "direct-x direct 10.10.3.2:5001 http://10.10.3.2:8080/ 10.10.3.2 5201"
  "haproxy-x haproxy 10.10.1.1:5002 http://10.10.1.1:81/ 10.10.1.1 5202"
  "xdpmesh-afxdp xdpmesh 10.10.1.1:5001 http://10.10.1.1/ 10.10.1.1 5201"
)

# --policies: one service (web) at two paths of gateway A's tables, on the same gateways; the
# second "plain" is the control (A/A): how far two identical targets land apart in one run.
POLICY_TARGETS=(
  "plain plain - http://10.10.1.1/ - -"
  "retries retries - http://10.10.1.1/retry/ - -"
  "plain-again control - http://10.10.1.1/ - -"
)
KERNEL_ABOUT="no XDP program attached: direct, HAProxy pair, xdpmesh pair on kernel sockets"
AFXDP_ABOUT="xdpmesh pair on AF_XDP (XDP attached on the gateways' veths; poll ${GW_POLL:-adaptive}, spin ${GW_SPIN:-2ms}): direct, HAProxy pair, xdpmesh pair"
SERVERS="nginx 1 worker return 200 on 10.10.3.2:8080; xdpmesh-bench serve echo on :5001; iperf3 -s on :5201"
MODE_JSON=
if [ "$POLICIES" -eq 1 ]; then
  SERVERS="nginx 1 worker return 200 on 10.10.3.2:8080"
  KERNEL_TARGETS=("${POLICY_TARGETS[@]}")
  AFXDP_TARGETS=("${POLICY_TARGETS[@]}")
  KERNEL_ABOUT="xdpmesh pair on kernel sockets (--backend kernel), web plain vs the route with retries (no failures)"
  AFXDP_ABOUT="xdpmesh pair on AF_XDP (--backend afxdp; adaptive polling, at most ${GW_SPIN:-2ms} after the last work), web plain vs the route with retries (no failures)"
  MODE_JSON=$'\n  "mode": "policies",\n  "routes": {"plain": "web (no policy)", "retries": "web-retry: retries, every key at its default", "tables": "scripts/rig/gwa-tables.toml"},'
fi

targets_json() {
  local line sep=""
  printf '['
  for line in "$@"; do
    # shellcheck disable=SC2086
    set -- $line
    if [ "$3" = - ]; then
      # --policies: HTTP only.
      printf '%s{"name": "%s", "role": "%s", "http": "%s"}' "$sep" "$1" "$2" "$4"
    else
      printf '%s{"name": "%s", "role": "%s", "tcp": "%s", "http": "%s", "bulk": "%s:%s"}' \
        "$sep" "$1" "$2" "$3" "$4" "$5" "$6"
    fi
    sep=", "
  done
  printf ']'
}
rates_json=$(printf '"%s",' "${RATES[@]}")
cat >"$RAW/meta.json" <<JSON
{
  "command": "scripts/bench.sh $ARGS",$MODE_JSON
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "quick": $([ "$QUICK" -eq 1 ] && echo true || echo false),
  "rates": [${rates_json%,}],
  "max_rate_asked": $MAX_RATE,
  "rounds": $ROUNDS,
  "duration_per_target": "$DURATION",
  "warmup_per_round": "$WARMUP",
  "tcp_connections": $TCP_CONNS,
  "http_connections": $HTTP_CONNS,
  "wrk_seconds_per_round": $WRK_SECONDS,
  "iperf3_seconds_per_round": $IPERF_SECONDS,
  "clk_tck": $(getconf CLK_TCK),
  "servers": "$SERVERS",
  "haproxy": "$(haproxy -v | head -1 | cut -d' ' -f1-3)",
  "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo '+dirty')",
  "phases": [
    {"name": "kernel", "about": "$KERNEL_ABOUT",
     "targets": $(targets_json "${KERNEL_TARGETS[@]}")},
    {"name": "afxdp", "about": "$AFXDP_ABOUT",
     "targets": $(targets_json "${AFXDP_TARGETS[@]}")}
  ]
}
JSON

# --policies: what is compared is in force, i.e. gateway A's tables route /retry/ by a route
# with retries and / by one without (only answers to the former say how many attempts).
check_policy_routes() {
  local plain retry
  plain=$(ip netns exec xm-cli curl -sS -D - -o /dev/null --max-time 5 http://10.10.1.1/)
  retry=$(ip netns exec xm-cli curl -sS -D - -o /dev/null --max-time 5 http://10.10.1.1/retry/)
  if ! head -1 <<<"$plain" | grep -q ' 200' || ! head -1 <<<"$retry" | grep -q ' 200' ||
    grep -qi '^x-xdpmesh-attempts:' <<<"$plain" || ! grep -qi '^x-xdpmesh-attempts: 1' <<<"$retry"; then
    xm_log "bench.sh --policies: expected 200 from http://10.10.1.1/ without x-xdpmesh-attempts and"
    xm_log "bench.sh --policies: 200 from http://10.10.1.1/retry/ with x-xdpmesh-attempts: 1 (the routes"
    xm_log "bench.sh --policies: web-retry and web of scripts/rig/gwa-tables.toml); got:"
    printf '%s\n---\n%s\n' "$plain" "$retry" | sed 's/^/  /' >&2
    return 1
  fi
  echo "routes: http://10.10.1.1/ -> web (no policy); http://10.10.1.1/retry/ -> web-retry (retries, x-xdpmesh-attempts: 1)"
}

# --policies: the whole flow, both backends; the results as the default mode's, named -policies.
run_policies() {
  local phase rate
  for phase in kernel afxdp; do
    xm_section "backend $phase: xdpmesh pair, web plain vs the route with retries (no failures)"
    if [ "$phase" = afxdp ]; then
      bash scripts/rig.sh mesh --backend afxdp ${GW_SPIN:+--spin "$GW_SPIN"} ${GW_POLL:+--poll "$GW_POLL"}
    else
      bash scripts/rig.sh mesh --backend kernel
    fi
    check_policy_routes
    measure "$phase" "${POLICY_TARGETS[@]}"
    # Nothing failed, so nothing may have been retried: gateway A's counters say so.
    ip netns exec xm-gwa curl -sf --max-time 5 http://127.0.0.1:9901/metrics >"$RAW/$phase/gwa-metrics.txt" ||
      xm_log "bench.sh --policies: gateway A's /metrics did not answer"
    bash scripts/rig.sh stop
  done
  xm_section "results"
  mkdir -p "$OUT"
  python3 scripts/bench/report.py "$RAW" "$OUT/bench-$STAMP-policies.json" | tee "$OUT/bench-$STAMP-policies.txt"
  for phase in kernel afxdp; do
    for rate in "${RATES[@]}"; do
      "$BENCH_BIN" plot -o "$OUT/bench-$STAMP-policies-$phase-http-$rate.svg" \
        --title "HTTP keep-alive GET, $rate req/s, xdpmesh pair ($phase): web plain, with retries (no failures), plain again" \
        "$RAW/$phase/http-$rate.json"
    done
  done
  echo "saved: $OUT/bench-$STAMP-policies.json, $OUT/bench-$STAMP-policies.txt, $OUT/bench-$STAMP-policies-*.svg"
}

if [ "$POLICIES" -eq 1 ]; then
  run_policies
  exit 0
fi

xm_section "phase kernel: direct, HAProxy pair, xdpmesh pair (--backend kernel)"
bash scripts/rig.sh mesh --backend kernel
start_haproxy
measure kernel "${KERNEL_TARGETS[@]}"

xm_section "phase afxdp: direct, HAProxy pair, xdpmesh pair (--backend afxdp)"
bash scripts/rig.sh stop
bash scripts/rig.sh mesh --backend afxdp ${GW_SPIN:+--spin "$GW_SPIN"} ${GW_POLL:+--poll "$GW_POLL"}
measure afxdp "${AFXDP_TARGETS[@]}"
bash scripts/rig.sh stop

xm_section "results"
mkdir -p "$OUT"
python3 scripts/bench/report.py "$RAW" "$OUT/bench-$STAMP.json" | tee "$OUT/bench-$STAMP.txt"
for mode in tcp http; do
  for rate in "${RATES[@]}"; do
    what="TCP 64 B echo"
    [ "$mode" = http ] && what="HTTP keep-alive GET"
    "$BENCH_BIN" plot -o "$OUT/bench-$STAMP-$mode-$rate.svg" \
      --title "$what, $rate req/s: direct, HAProxy pair, xdpmesh pair (-k: kernel phase, -x: AF_XDP phase)" \
      "$RAW/kernel/$mode-$rate.json" "$RAW/afxdp/$mode-$rate.json"
  done
done
echo "saved: $OUT/bench-$STAMP.json, $OUT/bench-$STAMP.txt, $OUT/bench-$STAMP-*.svg"
