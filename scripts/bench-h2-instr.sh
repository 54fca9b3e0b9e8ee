#!/usr/bin/env bash
# Instructions per request through one gateway, by client and server protocol (issue #19):
#
#   scripts/bench-h2-instr.sh [--bin PATH] [--requests N] [--keep DIR]
#
# A kernel-socket gateway (`xdpmesh run --backend kernel`, no root, loopback only) runs under
# valgrind's callgrind, in front of one nginx that answers "ok" on HTTP/1.1 and on h2c. h2load
# sends N requests (default 10,000) per case after a warm-up, and the script prints the
# gateway's instructions per request (its user space: the kernel's socket work is not counted):
#   h1c-h1s   HTTP/1.1 clients (h2load --h1, 32 connections)   -> HTTP/1.1 server
#   h1c-h2s   HTTP/1.1 clients                                  -> h2c server (the `h2` back)
#   h2c-h1s   h2c clients (4 connections x 8 streams, the front) -> HTTP/1.1 server
#   h2c-h2s   h2c clients                                       -> h2c server
# Counts, not times: they do not move with the machine's load, so two builds compare in one
# run each. Use a release build (the default path; `cargo build --release -p dataplane --bin
# xdpmesh`). --keep DIR keeps the callgrind files (callgrind_annotate DIR/cg.*.N). Ports
# 18000-18099 on 127.0.0.1 must be free. About 2 minutes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh

BIN=target/release/xdpmesh
REQUESTS=10000
KEEP=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=${2:-}; shift 2 ;;
    --requests) REQUESTS=${2:-}; shift 2 ;;
    --keep) KEEP=${2:-}; shift 2 ;;
    *) xm_log "usage: $0 [--bin PATH] [--requests N] [--keep DIR]"; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { xm_log "bench-h2-instr.sh: $BIN missing (build it in release)"; exit 1; }
for t in valgrind callgrind_control callgrind_annotate nginx h2load curl; do
  command -v "$t" >/dev/null || { xm_log "bench-h2-instr.sh: $t missing (scripts/lib/deps.sh)"; exit 1; }
done
BIN=$(realpath "$BIN")

DIR=$(mktemp -d /tmp/xm-h2-instr.XXXXXX)
GW_PID=
NGINX_PID=
cleanup() {
  # The gateway and nginx this run started, and nothing else.
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP"
    cp "$DIR"/cg.* "$KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT

mkdir -p "$DIR/tmp"
cat >"$DIR/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_body_temp_path $DIR/tmp;
  server { listen 127.0.0.1:18080; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:18081 http2; location / { return 200 "ok\n"; } }
}
EOF
cat >"$DIR/node.toml" <<EOF
[node]
name = "instr"
tables = "tables.toml"
admin = "127.0.0.1:18099"
EOF
cat >"$DIR/tables.toml" <<EOF
[[listener]]
name = "web"
bind = "127.0.0.1:18000"
protocol = "http"

[[service]]
name = "h1"
hosts = ["h1.test"]
endpoints = [{ address = "127.0.0.1:18080" }]

[[service]]
name = "h2s"
hosts = ["h2.test"]
upstream_protocol = "h2c"
endpoints = [{ address = "127.0.0.1:18081" }]
EOF

nginx -q -e "$DIR/nginx-error.log" -p "$DIR" -c "$DIR/nginx.conf" &
NGINX_PID=$!
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.%p" \
  "$BIN" run --backend kernel --config "$DIR/node.toml" >"$DIR/gateway.log" 2>&1 &
GW_PID=$!
up=0
for _ in $(seq 120); do
  if curl -s -o /dev/null -H 'Host: h1.test' http://127.0.0.1:18000/ &&
    curl -s -o /dev/null -H 'Host: h2.test' http://127.0.0.1:18000/; then
    up=1
    break
  fi
  sleep 0.5
done
[ "$up" = 1 ] || { xm_log "bench-h2-instr.sh: no answer through the gateway"; cat "$DIR/gateway.log" >&2; exit 1; }

CASES=("h1c-h1s|--h1 -c 32|h1" "h1c-h2s|--h1 -c 32|h2" "h2c-h1s|-c 4 -m 8|h1" "h2c-h2s|-c 4 -m 8|h2")
# Warm-up: connections open, pools and HPACK tables filled.
for c in "${CASES[@]}"; do
  IFS='|' read -r _ args host <<<"$c"
  # shellcheck disable=SC2086 # $args is h2load's options, split on purpose
  h2load $args -n 2000 -H ":authority: $host.test" http://127.0.0.1:18000/ >/dev/null
done
for c in "${CASES[@]}"; do
  IFS='|' read -r name args host <<<"$c"
  callgrind_control -z "$GW_PID" >/dev/null 2>&1
  # shellcheck disable=SC2086
  out=$(h2load $args -n "$REQUESTS" -H ":authority: $host.test" http://127.0.0.1:18000/)
  callgrind_control -d "$name" "$GW_PID" >/dev/null 2>&1
  ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
  [ "$ok" = "$REQUESTS" ] || { xm_log "bench-h2-instr.sh: $name: $ok of $REQUESTS answered 2xx"; exit 1; }
done

printf '%-9s %s\n' case "instructions per request (gateway, user space)"
for f in "$DIR"/cg.*.[0-9]*; do
  name=$(sed -n 's/^desc: Trigger: dump //p' "$f")
  total=$(callgrind_annotate "$f" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  printf '%-9s %s\n' "$name" "$(awk -v t="$total" -v n="$REQUESTS" 'BEGIN { printf "%.1fk", t / n / 1000 }')"
done
