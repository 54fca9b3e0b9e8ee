#!/usr/bin/env bash
# Interleaved A/B(/C…) throughput of xdpmesh builds on the rig: each round starts the pair with
# every build in turn (`scripts/rig.sh mesh` of that build's own checkout, so its rig tables
# match it), warms up 2 s, then runs `wrk -t1 -c32` through gateway A to nginx in xm-srv (or,
# with `--load bulk`, iperf3 through A's TCP listener 10.10.1.1:5201 to iperf3 -s in xm-srv,
# `--streams N` streams; Mbit/s instead of req/s). The
# builds alternate within each round, so drift and noisy neighbours hit all of them alike;
# compare sums over rounds, not single rounds (one build's rounds spread 15–25 % on the 2-core
# VM). Prints one line per run and the sums at the end.
#
#   sudo scripts/bench-ab.sh [--backend afxdp|kernel] [--rounds N] [--seconds S] \
#        [--load wrk|bulk] [--streams N] NAME=BINARY[@CHECKOUT] NAME=BINARY[@CHECKOUT] ...
#
# CHECKOUT (default: this one) is the tree whose scripts/rig.sh and rig tables start BINARY,
# e.g. a `git worktree add /tmp/old <commit>` for an older build. Defaults: afxdp, 4 rounds,
# 8 s, wrk, 1 stream. Needs the rig free (like scripts/bench.sh); leaves it as it found it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh

BACKEND=afxdp
ROUNDS=4
SECONDS_PER_RUN=8
LOAD=wrk
STREAMS=1
BUILDS=()
while [ $# -gt 0 ]; do
  case $1 in
    --backend) BACKEND=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --load) LOAD=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    *=*) BUILDS+=("$1"); shift ;;
    *) xm_log "bench-ab.sh: unknown argument $1"; exit 2 ;;
  esac
done
[ "${#BUILDS[@]}" -ge 2 ] || { xm_log "bench-ab.sh: give at least two NAME=BINARY[@CHECKOUT]"; exit 2; }
case $BACKEND in afxdp | kernel) ;; *) xm_log "bench-ab.sh: --backend afxdp|kernel"; exit 2 ;; esac
case $LOAD in wrk | bulk) ;; *) xm_log "bench-ab.sh: --load wrk|bulk"; exit 2 ;; esac
case $STREAMS in '' | *[!0-9]*) xm_log "bench-ab.sh: --streams N"; exit 2 ;; esac

export XM_RIG_STATE=${XM_RIG_STATE:-/run/xdpmesh-bench-ab}
HERE=$(pwd)
RIG_WAS_UP=0
if ip netns list | awk '{print $1}' | grep -qx xm-cli; then RIG_WAS_UP=1; fi
NGINX_PID=
IPERF_PID=
cleanup() {
  local b tree
  for b in "${BUILDS[@]}"; do
    tree=${b#*=}
    tree=${tree#*@}
    [ "$tree" = "${b#*=}" ] && tree=$HERE
    (cd "$tree" && bash scripts/rig.sh stop >/dev/null 2>&1) || true
  done
  # A server killed by its signal exits non-zero: that must not end the cleanup (set -e)
  # before the rig goes down.
  local pid
  for pid in "$NGINX_PID" "$IPERF_PID"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
  done
  [ "$RIG_WAS_UP" -eq 0 ] && bash scripts/rig.sh down >/dev/null 2>&1
  return 0
}
trap cleanup EXIT

bash scripts/rig.sh up >/dev/null
mkdir -p "$XM_RIG_STATE/nginx-tmp"
sed "s|@STATE@|$XM_RIG_STATE|g" scripts/bench/nginx.conf >"$XM_RIG_STATE/nginx.conf"
ip netns exec xm-srv nginx -q -e "$XM_RIG_STATE/nginx-error.log" -p "$XM_RIG_STATE" \
  -c "$XM_RIG_STATE/nginx.conf" &
NGINX_PID=$!
deadline=$((SECONDS + 15))
until ip netns exec xm-cli curl -s -o /dev/null http://10.10.3.2:8080/; do
  [ "$SECONDS" -lt "$deadline" ] || { xm_log "bench-ab.sh: nginx did not answer"; exit 1; }
  sleep 0.1
done
if [ "$LOAD" = bulk ]; then
  ip netns exec xm-srv iperf3 -s -B 10.10.3.2 -p 5201 >"$XM_RIG_STATE/iperf3.log" 2>&1 &
  IPERF_PID=$!
fi

# One run of the load through gateway A: prints "req/s N p99 T" or "Mbit/s M"; N or M is
# what the rounds sum.
run_load() {
  local out
  if [ "$LOAD" = wrk ]; then
    ip netns exec xm-cli wrk -t1 -c32 -d2s http://10.10.1.1/ >/dev/null 2>&1
    out=$(ip netns exec xm-cli wrk -t1 -c32 -d"${SECONDS_PER_RUN}s" --latency http://10.10.1.1/ 2>&1)
    echo "req/s $(awk '/Requests\/sec/{printf "%d", $2}' <<<"$out") p99 $(awk '$1 == "99%" {print $2}' <<<"$out")"
  else
    # -O 2: the first 2 s (slow start, the pair's warm-up) are left out of the figure.
    out=$(ip netns exec xm-cli timeout $((SECONDS_PER_RUN + 20)) iperf3 -c 10.10.1.1 -p 5201 \
      -P "$STREAMS" -O 2 -t "$SECONDS_PER_RUN" -J 2>/dev/null) || true
    echo "Mbit/s $(python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))' \
      <<<"$out" 2>/dev/null || echo 0)"
    # iperf3's server takes one test at a time: let it finish with this one.
    sleep 0.5
  fi
}

declare -A SUM
for r in $(seq 1 "$ROUNDS"); do
  for b in "${BUILDS[@]}"; do
    name=${b%%=*}
    spec=${b#*=}
    bin=${spec%%@*}
    tree=$HERE
    [ "$spec" != "$bin" ] && tree=${spec#*@}
    bin=$(realpath "$bin")
    (cd "$tree" && XDPMESH_BIN=$bin bash scripts/rig.sh mesh --backend "$BACKEND" >/dev/null)
    line=$(run_load)
    echo "$BACKEND round $r $name $line load $(cut -d' ' -f1 /proc/loadavg)"
    SUM[$name]=$(( ${SUM[$name]:-0} + $(awk '{print $2 + 0}' <<<"$line") ))
    (cd "$tree" && bash scripts/rig.sh stop >/dev/null)
  done
done
first=${BUILDS[0]%%=*}
for b in "${BUILDS[@]}"; do
  name=${b%%=*}
  echo "sum $name ${SUM[$name]} ratio to $first $(awk -v a="${SUM[$name]}" -v b="${SUM[$first]}" 'BEGIN{printf "%.3f", a/b}')"
done
