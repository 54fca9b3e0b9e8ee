#!/usr/bin/env bash
# xdpmesh's main job on a fresh Debian 12 machine, as root:  sudo scripts/demo.sh
#
# What it does today (the mesh itself is not built yet, see README "Status"):
#   1. installs missing Debian packages and builds the workspace (release);
#   2. brings up the four-namespace veth rig (scripts/rig.sh up);
#   3. shows the direct path client -> server by kernel forwarding: ping, an HTTP download from
#      nginx checked byte for byte with sha256, and an iperf3 bulk transfer;
#   4. says plainly that the gateways do not exist yet;
#   5. tears down what it started (servers, rig) on exit, failure or Ctrl-C.
# Exits 0 when every step worked.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh

if ! xm_is_root; then
  xm_log "demo.sh needs root (network namespaces, veth): sudo scripts/demo.sh"
  exit 1
fi

WORK=""
PIDS=()
RIG_WAS_UP=0
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$RIG_WAS_UP" -eq 0 ]; then
    bash scripts/rig.sh down >/dev/null 2>&1 || true
    echo "demo: rig torn down"
  else
    echo "demo: the rig was up before the demo; left up (scripts/rig.sh down removes it)"
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until something listens on TCP port $2 in namespace $1 (deadline: 10 s).
wait_listen() {
  local ns=$1 port=$2 deadline=$((SECONDS + 10))
  while [ -z "$(ip netns exec "$ns" ss -Hltn "sport = :$port")" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      xm_log "demo: nothing listens on port $port in $ns after 10 s"
      return 1
    fi
    sleep 0.05
  done
}

xm_section "1/4 dependencies and build"
xm_install_deps
xm_install_rust_components
cargo build --workspace --release --locked

xm_section "2/4 the rig"
if ip netns list | awk '{print $1}' | grep -qx xm-cli; then RIG_WAS_UP=1; fi
bash scripts/rig.sh up
cat <<'PIC'

  xm-cli            xm-gwa                     xm-gwb                     xm-srv
  10.10.1.2 ─────── 10.10.1.1   10.10.2.1 ──── 10.10.2.2   10.10.3.1 ──── 10.10.3.2
  (client)          (gateway A: kernel         (gateway B: kernel         (server: nginx :8080,
                     forwarding today)          forwarding today)          iperf3 :5201)
PIC

xm_section "3/4 the direct path (kernel forwarding, no proxy)"
echo "-- ping xm-cli -> 10.10.3.2"
ip netns exec xm-cli ping -c 3 -i 0.2 -W 2 10.10.3.2

WORK=$(mktemp -d /tmp/xm-demo.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/www"
head -c $((16 * 1024 * 1024)) /dev/urandom >"$WORK/www/blob"
echo "hello from xm-srv" >"$WORK/www/index.html"
cat >"$WORK/nginx.conf" <<CONF
daemon off;
user root;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp;
  server {
    listen 10.10.3.2:8080;
    root $WORK/www;
  }
}
CONF
mkdir -p "$WORK/tmp"
ip netns exec xm-srv nginx -q -e "$WORK/error.log" -p "$WORK" -c "$WORK/nginx.conf" &
PIDS+=($!)
wait_listen xm-srv 8080

echo "-- curl http://10.10.3.2:8080/ from xm-cli"
ip netns exec xm-cli curl -fsS --max-time 10 http://10.10.3.2:8080/
echo "-- curl a 16 MiB file from xm-cli, compared with sha256"
ip netns exec xm-cli curl -fsS --max-time 60 -o "$WORK/got" \
  -w '   %{size_download} bytes in %{time_total} s (%{speed_download} B/s)\n' \
  http://10.10.3.2:8080/blob
sum_sent=$(sha256sum <"$WORK/www/blob" | cut -d' ' -f1)
sum_got=$(sha256sum <"$WORK/got" | cut -d' ' -f1)
echo "   sent     $sum_sent"
echo "   received $sum_got"
if [ "$sum_sent" != "$sum_got" ]; then
  xm_log "demo: the download differs from the file served"
  exit 1
fi

echo "-- iperf3 xm-cli -> 10.10.3.2:5201, 3 s, one stream"
ip netns exec xm-srv iperf3 -s -1 -B 10.10.3.2 -p 5201 >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=($!)
wait_listen xm-srv 5201
ip netns exec xm-cli iperf3 -c 10.10.3.2 -p 5201 -t 3 -f g | grep -E 'sender|receiver'

xm_section "4/4 the mesh"
cat <<'MSG'
The mesh is not built yet: AF_XDP I/O and the userspace TCP stack exist (see the tests), but
the gateways that join them to routing and mTLS between gateway A and gateway B do not, so the
traffic above crossed xm-gwa and xm-gwb by plain kernel IP forwarding. When they exist, this demo will start them with `scripts/rig.sh mesh` and
send the same traffic through the mesh. See README.md, "Status".

demo: the direct path works.
MSG
