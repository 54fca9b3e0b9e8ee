#!/usr/bin/env bash
# One bulk stream through the pairs over a lossy hop (issue #21 "Goals"), as root:
#
#   sudo scripts/bench-loss.sh [--rounds N] [--seconds S] [--loss "10 20"] [--no-build] [--out DIR]
#
# `scripts/rig.sh lossy` splices a bridge into the link between the gateways' namespaces and
# drops PERMILLE/1000 of the frames each way with nftables (the gateways' XDP programs sit on
# their own veth ends, the bridge in the middle is the kernel's). iperf3 from xm-cli, one
# stream, --seconds each, through:
#   haproxy   10.10.1.1:5202 -> haproxy A -> mTLS over the lossy link -> haproxy B -> iperf3 -s
#   xdpmesh   10.10.1.1:5201 -> gateway A (AF_XDP, tcpstack) -> mTLS over the lossy link ->
#             gateway B -> iperf3 -s 10.10.3.2:5201
# interleaved per round, for each loss rate (default 0, 1 % and 2 %). Prints Gbit/s (median
# and sum over rounds), xdpmesh / HAProxy per loss rate (goal >= 0.8 at 1 % and 2 %), and
# saves bench-loss-STAMP.txt under --out (default benches/results).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh
# shellcheck source-path=SCRIPTDIR source=lib/bench.sh
. scripts/lib/bench.sh

ROUNDS=3
SECONDS_EACH=5
LOSS="0 10 20"
BUILD=1
OUT=benches/results
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=${2:-}; shift 2 ;;
    --seconds) SECONDS_EACH=${2:-}; shift 2 ;;
    --loss) LOSS=${2:-}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=${2:-}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) xm_log "bench-loss.sh: unknown argument $1 (see --help)"; exit 64 ;;
  esac
done
for v in "$ROUNDS" "$SECONDS_EACH"; do
  case $v in '' | *[!0-9]* | 0) xm_log "bench-loss.sh: --rounds and --seconds take positive integers"; exit 64 ;; esac
done
if ! xm_is_root; then
  xm_log "bench-loss.sh needs root (network namespaces, XDP): sudo scripts/bench-loss.sh"
  exit 1
fi

export XM_RIG_STATE=${XM_RIG_STATE:-/run/xdpmesh-bench-loss}
export XDPMESH_BIN=${XDPMESH_BIN:-target/release/xdpmesh}
STATE=$XM_RIG_STATE
STAMP=$(date -u +%Y%m%d-%H%M)

xm_section "dependencies and build"
xm_install_deps
if [ "$BUILD" -eq 1 ]; then
  cargo build --release --locked -p dataplane --bin xdpmesh
fi
[ -x "$XDPMESH_BIN" ] || { xm_log "bench-loss.sh: $XDPMESH_BIN missing"; exit 1; }
if pgrep -f "xdpmesh run" >/dev/null 2>&1; then
  xm_log "bench-loss.sh: an 'xdpmesh run' is running (the rig is in use); stop it first"
  exit 1
fi

RAW=$(mktemp -d /tmp/xm-bench-loss.XXXXXX)
PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  bash scripts/rig.sh stop >/dev/null 2>&1 || true
  # The spliced link is not the rig's own: always take the rig down.
  bash scripts/rig.sh down >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    xm_log "bench-loss.sh: failed (exit $rc); raw results kept in $RAW, logs in $STATE"
  else
    rm -rf "$RAW"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


xm_section "the rig, a bridge in the gateways' link, both pairs"
bash scripts/rig.sh up
bash scripts/rig.sh lossy 0
for ns in xm-gwa xm-gwb; do
  # HAProxy's kernel sockets stay below the AF_XDP gateways' ephemeral range.
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="10000 32767"
done
mkdir -p "$STATE/haproxy"
ip netns exec xm-srv iperf3 -s -B 10.10.3.2 -p 5201 >"$STATE/iperf3.log" 2>&1 &
PIDS+=($!)
xm_wait_listen xm-srv 5201
bash scripts/rig.sh mesh --backend afxdp
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
xm_wait_listen xm-gwb 5202
xm_wait_listen xm-gwa 5202

TARGETS=("haproxy 5202" "xdpmesh 5201")
# iperf3 -J's received rate in Gbit/s.
gbits() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9)' "$1"
}

xm_section "measuring: loss per mille $LOSS; $ROUNDS rounds x ${SECONDS_EACH}s, one stream"
for loss in $LOSS; do
  bash scripts/rig.sh lossy "$loss" >/dev/null
  for r in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      # shellcheck disable=SC2086
      set -- $t
      f="$RAW/$1-$loss-$r.json"
      if ! ip netns exec xm-cli iperf3 -c 10.10.1.1 -p "$2" -t "$SECONDS_EACH" -J >"$f" 2>&1; then
        xm_log "bench-loss.sh: iperf3 through $1 at $loss/1000 failed:"
        sed 's/^/  /' "$f" >&2
        exit 1
      fi
      echo "$loss $1 $r $(gbits "$f")" | tee -a "$RAW/rounds.txt"
    done
  done
done
dropped=$(ip netns exec xm-br nft list table bridge xm_loss | sed -n 's/.*counter packets \([0-9]*\).*/\1/p')

mkdir -p "$OUT"
REPORT="$OUT/bench-loss-$STAMP.txt"
python3 - "$RAW/rounds.txt" "$ROUNDS" "$SECONDS_EACH" "$dropped" >"$REPORT" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
rounds, secs, dropped = sys.argv[2:5]
by = {}
for loss, name, _, g in rows:
    by.setdefault(int(loss), {}).setdefault(name, []).append(float(g))
print(f"iperf3, one stream, {rounds} interleaved rounds of {secs} s per loss rate; "
      f"frames dropped by the bridge in the last rate's run: {dropped}")
print(f"{'loss':>6} {'path':8} {'Gbit/s median':>14} {'Gbit/s sum':>11}")
for loss in sorted(by):
    for name, v in by[loss].items():
        print(f"{loss / 10:5.1f}% {name:8} {statistics.median(v):14.3f} {sum(v):11.3f}")
print()
for loss in sorted(by):
    h, x = by[loss].get("haproxy"), by[loss].get("xdpmesh")
    if h and x:
        goal = "  (goal >= 0.8)" if loss in (10, 20) else ""
        print(f"{loss / 10:4.1f}% loss: xdpmesh / HAProxy (sums) {sum(x) / sum(h):.2f}{goal}")
EOF
cat "$REPORT"
echo "saved: $REPORT"
