#!/usr/bin/env bash
# xdpmesh's main job on a fresh Debian 12 machine, as root:  sudo scripts/demo.sh
#
#   1. installs missing Debian packages and, when no Rust toolchain >= Cargo.toml's rust-version
#      is found, Debian's rustc-web/cargo-web (scripts/lib/toolchain.sh); builds xdpmesh and the
#      latency harness (release) as $SUDO_USER under sudo, so target/ stays theirs;
#   2. brings up the four-namespace veth rig (scripts/rig.sh up) and starts nginx in xm-srv:
#      version v1 of the service "web" on 10.10.3.2:8080, version v2 on 10.10.3.2:8081;
#   3. makes a CA and the identities with `xdpmesh ca` and starts gateway A (xm-gwa) and
#      gateway B (xm-gwb) (scripts/rig.sh mesh); they speak mTLS to each other;
#   4. sends traffic through the mesh: a checked download, a 90/10 canary split, a header
#      route, a call from an identity B does not allow (403, counted), and a live table reload
#      to 50/50 under load without a failed request;
#   5. measures http://10.10.1.1/ through the mesh with the latency harness (xdpmesh-bench);
#   6. says where the metrics, the admin API and the Grafana dashboard are (the split's golden
#      metrics, v1/v2 requests, success and p50/p99, are shown from gw-a's /metrics in step 4);
#   7. tears down what it started (gateways, nginx, rig, temp files) on exit, failure or Ctrl-C.
# Exits 0 when every check passed; otherwise prints what failed and exits non-zero.
#
# Usage: scripts/demo.sh [--keep-logs[=DIR]]
#   --keep-logs   keep the demo's output, both gateways' logs, nginx's error log, the tables it
#                 used and each step's raw results in DIR (default
#                 /var/tmp/xdpmesh-demo-YYYYmmdd-HHMMSS); the last line says where. Without
#                 it, everything goes with the temp directory at exit (on failure the last
#                 gateway log lines are printed first).
# Environment: XM_DEMO_BACKEND=afxdp|kernel (default afxdp): the gateways' packet I/O.
#              XM_DEMO_HOLD=1: after the last step, keep the mesh up until Enter or Ctrl-C.
#              XM_DEMO_KEEP_LOGS=1 or =DIR: as --keep-logs.
#              CARGO_TARGET_DIR is honoured, as cargo does.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
. scripts/lib/deps.sh
# shellcheck source-path=SCRIPTDIR source=lib/toolchain.sh
. scripts/lib/toolchain.sh

KEEP_LOGS=${XM_DEMO_KEEP_LOGS:-}
for arg in "$@"; do
  case $arg in
    --keep-logs) KEEP_LOGS=1 ;;
    --keep-logs=*) KEEP_LOGS=${arg#--keep-logs=} ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *) xm_log "demo.sh: unknown argument '$arg' (usage: scripts/demo.sh [--keep-logs[=DIR]])"; exit 64 ;;
  esac
done
case $KEEP_LOGS in
  "" | 0) KEEP_LOGS="" ;;
  1) KEEP_LOGS=/var/tmp/xdpmesh-demo-$(date +%Y%m%d-%H%M%S) ;;
esac

if ! xm_is_root; then
  xm_log "demo.sh needs root (network namespaces, veth, AF_XDP): sudo scripts/demo.sh"
  exit 1
fi

BACKEND=${XM_DEMO_BACKEND:-afxdp}
case $BACKEND in
  afxdp | kernel) ;;
  *) xm_log "demo.sh: XM_DEMO_BACKEND must be afxdp or kernel, not '$BACKEND'"; exit 64 ;;
esac

started=$SECONDS
step() {
  xm_section "$* ($((SECONDS - started)) s)"
}

fail() {
  xm_log "demo: FAILED: $*"
  exit 1
}

WORK=""
PIDS=()
RIG_OURS=0
MESH_STARTED=0
cleanup() {
  local rc=$? pid
  trap - EXIT
  # A second Ctrl-C must not cut the teardown short.
  trap '' INT TERM
  if [ "$rc" -ne 0 ] && [ -n "$WORK" ]; then
    local log
    for log in "$WORK"/state/gwa.log "$WORK"/state/gwb.log; do
      [ -s "$log" ] || continue
      xm_log "---- last lines of ${log##*/}"
      tail -n 15 "$log" | sed 's/^/  /' >&2
    done
  fi
  if [ "$MESH_STARTED" -eq 1 ]; then
    bash scripts/rig.sh stop >/dev/null 2>&1 || true
  fi
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$RIG_OURS" -eq 1 ]; then
    bash scripts/rig.sh down >/dev/null 2>&1 || true
    echo "demo: gateways and servers stopped, rig torn down"
  fi
  if [ "$rc" -eq 0 ]; then
    echo "demo: done in $((SECONDS - started)) s"
  else
    echo "demo: exit $rc after $((SECONDS - started)) s"
  fi
  if [ -n "$KEEP_LOGS" ]; then keep_logs; fi
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
  exit "$rc"
}
# keep_logs: what --keep-logs keeps, copied out of $WORK before it goes (no keys, no 16 MiB blob).
keep_logs() {
  local f inv
  if [ -n "$WORK" ]; then
    for f in "$WORK"/state/*.log "$WORK"/state/*.toml "$WORK"/*.log "$WORK"/*.out "$WORK"/*.err \
      "$WORK"/*.toml "$WORK"/nginx.conf; do
      [ -f "$f" ] && cp "$f" "$KEEP_LOGS/"
    done
  fi
  inv=$(xm_invoker)
  if [ -n "$inv" ]; then chown -R "$inv:" "$KEEP_LOGS" 2>/dev/null || true; fi
  echo "demo: logs kept in $KEEP_LOGS (demo.log is this output; gwa.log, gwb.log the gateways')"
}

if [ -n "$KEEP_LOGS" ]; then
  mkdir -p "$KEEP_LOGS"
  # Everything the demo prints, also into demo.log.
  exec > >(tee -a "$KEEP_LOGS/demo.log") 2>&1
fi

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for SECONDS WHAT COMMAND...: runs COMMAND until it succeeds; fails after SECONDS.
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what (waited $limit s)"
    sleep 0.05
  done
}

listening() { [ -n "$(ip netns exec "$1" ss -Hltn "sport = :$2")" ]; }

cli() { ip netns exec xm-cli "$@"; }

# The sum of the values of the metric lines of gateway namespace $1 that start with $2 and
# contain $3.
metric() {
  ip netns exec "$1" curl -fsS --max-time 5 http://127.0.0.1:9901/metrics |
    awk -v name="$2" -v label="$3" 'index($0, name) == 1 && index($0, label) { s += $NF }
      END { printf "%d\n", s }'
}

# put_tables NS FILE: PUT /tables on the gateway in NS; fails unless it answers 200.
put_tables() {
  local ns=$1 file=$2 code
  code=$(ip netns exec "$ns" curl -sS --max-time 10 -o "$WORK/put.out" -w '%{http_code}' \
    -X PUT --data-binary "@$file" http://127.0.0.1:9901/tables) || true
  [ "$code" = 200 ] || fail "PUT /tables on $ns answered '$code': $(cat "$WORK/put.out" 2>/dev/null)"
  echo "   PUT /tables on $ns: $(tr -d '\n' <"$WORK/put.out")"
}

# requests N [curl options]: N GETs of http://10.10.1.1/ on one keep-alive connection from
# xm-cli; one line per request: "<body> <status> <new connections>".
requests() {
  local n=$1
  shift
  cli curl -sS -N --max-time 60 "$@" -w ' %{http_code} %{num_connects}\n' \
    "http://10.10.1.1/?n=[1-$n]"
}

# count FILE: "v1 v2 ok total" from the lines of `requests`.
count() {
  awk '{ t++ } $2 == 200 { ok++ } $1 == "v1" { a++ } $1 == "v2" { b++ }
    END { printf "%d %d %d %d\n", a, b, ok, t }' "$1"
}

# golden_split: gateway A's golden metrics of the route "split", read from its /metrics, one
# line per endpoint: "endpoint requests successes p50_seconds p99_seconds" (the quantiles as
# Prometheus's histogram_quantile interpolates them in xdpmesh_request_duration_seconds).
golden_split() {
  ip netns exec xm-gwa curl -fsS --max-time 5 http://127.0.0.1:9901/metrics | awk '
    function lab(k) {
      if (!match($0, k "=\"[^\"]*\"")) return ""
      return substr($0, RSTART + length(k) + 2, RLENGTH - length(k) - 3)
    }
    function q(ep, p,   i, le, c, rank, lo, plo) {
      rank = p * b[ep, "+Inf"]; lo = 0; plo = 0
      for (i = 1; i <= nle; i++) {
        le = sle[i]; c = b[ep, le]
        if (c >= rank && c > 0) {
          if (le == "+Inf") return lo
          return lo + (le - lo) * (rank - plo) / (c - plo)
        }
        lo = le; plo = c
      }
      return lo
    }
    index($0, "route=\"split\"") == 0 { next }
    /^xdpmesh_requests_total[{]/ {
      ep = lab("endpoint"); eps[ep] = 1; n[ep] += $NF
      if (lab("classification") == "success") ok[ep] += $NF
    }
    /^xdpmesh_request_duration_seconds_bucket[{]/ {
      ep = lab("endpoint"); le = lab("le"); b[ep, le] += $NF
      if (!(le in seen)) { seen[le] = 1; sle[++nle] = le }
    }
    END {
      for (ep in eps) printf "%s %d %d %.6f %.6f\n", ep, n[ep], ok[ep], q(ep, 0.5), q(ep, 0.99)
    }' | sort
}

# split_counted V1 V2: gateway A counted V1 requests of the split on v1 (10.10.3.2:8080) and
# V2 on v2 (10.10.3.2:8081), every one a success.
split_counted() {
  golden_split >"$WORK/golden.out" || return 1
  [ "$(awk '{ printf "%s %d %d;", $1, $2, $3 }' "$WORK/golden.out")" = \
    "10.10.3.2:8080 $1 $1;10.10.3.2:8081 $2 $2;" ]
}

# gwa_tables V2_WEIGHT: scripts/rig/split-gwa-tables.toml (web split v1/v2, a header route
# city: berlin -> v2, and a second client identity, 10.10.1.3, that B does not allow) with the
# split's weights set to 100 - V2_WEIGHT and V2_WEIGHT.
gwa_tables() {
  local out
  out=$(sed -e "s/weight = [0-9]* }, # split v1$/weight = $((100 - $1)) }, # split v1/" \
    -e "s/weight = [0-9]* }, # split v2$/weight = $1 }, # split v2/" scripts/rig/split-gwa-tables.toml)
  # Both weights must have been set: a file edited out of shape fails here, not as a wrong split.
  if ! grep -q "weight = $((100 - $1)) }, # split v1" <<<"$out" ||
    ! grep -q "weight = $1 }, # split v2" <<<"$out"; then
    xm_log "demo.sh: scripts/rig/split-gwa-tables.toml has no 'split v1'/'split v2' weight lines"
    return 1
  fi
  printf '%s\n' "$out"
}

# Gateway B's tables: both versions of web behind the mesh listener; only sa/client may call.
gwb_tables() {
  cat scripts/rig/split-gwb-tables.toml
}

# The rig's namespaces are shared by everything that uses them (tests, scripts/bench.sh): one
# user at a time. Namespaces left by an interrupted run, with nothing running in them, are reused.
busy=""
for ns in xm-cli xm-gwa xm-gwb xm-srv; do
  if [ -n "$(ip netns pids "$ns" 2>/dev/null || true)" ]; then busy+=" $ns"; fi
done
if [ -n "$busy" ]; then
  fail "the rig is in use (processes in$busy); let that run finish, or run scripts/rig.sh down"
fi

# ---------------------------------------------------------------------------------------------
step "1/7 dependencies and build"
xm_install_deps
xm_install_toolchain || fail "no usable Rust toolchain (see above)"
# Under sudo, as $SUDO_USER when the toolchain is theirs (target/ stays theirs), else as root;
# files root made in target/ are given back to $SUDO_USER first.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
xm_give_back "$TARGET_DIR"
echo "building as $XM_RUST_OWNER with $XM_RUST_FROM"
xm_as_builder cargo build --release --locked -p dataplane -p benches --bin xdpmesh --bin xdpmesh-bench
XDPMESH_BIN=$(realpath "$TARGET_DIR/release/xdpmesh")
BENCH=$(realpath "$TARGET_DIR/release/xdpmesh-bench")
export XDPMESH_BIN

WORK=$(mktemp -d /tmp/xm-demo.XXXXXX)
chmod 755 "$WORK"
export XM_RIG_STATE=$WORK/state

# ---------------------------------------------------------------------------------------------
step "2/7 the rig and the servers"
RIG_OURS=1
bash scripts/rig.sh up
cat <<'PIC'

  xm-cli            xm-gwa                        xm-gwb                        xm-srv
  10.10.1.2 ─────── 10.10.1.1  10.10.2.1 ═══════ 10.10.2.2  10.10.3.1 ─────── 10.10.3.2
  (client:          (gateway A: listens :80,      (gateway B: mesh listener     (nginx: web v1 :8080,
   curl, harness)    routes, client identity)      :15443, authorization)        web v2 :8081)
                                    ═══ mTLS between the gateways
PIC

mkdir -p "$WORK/www" "$WORK/tmp"
head -c $((16 * 1024 * 1024)) /dev/urandom >"$WORK/www/blob"
cat >"$WORK/nginx.conf" <<CONF
daemon off;
user root;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  # Keep-alive for the whole run: nginx's default closes a connection after 1000 requests.
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_body_temp_path $WORK/tmp;
  default_type text/plain;
  server {
    listen 10.10.3.2:8080;
    location = / { return 200 "v1"; }
    location / { root $WORK/www; }
  }
  server {
    listen 10.10.3.2:8081;
    location / { return 200 "v2"; }
  }
}
CONF
ip netns exec xm-srv nginx -q -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf" &
PIDS+=($!)
wait_for 10 "nginx listening on 10.10.3.2:8081 in xm-srv" listening xm-srv 8081
echo "nginx in xm-srv: web v1 on 10.10.3.2:8080, web v2 on 10.10.3.2:8081"

# ---------------------------------------------------------------------------------------------
step "3/7 CA, identities and the two gateways ($BACKEND)"
MESH_STARTED=1
bash scripts/rig.sh mesh --backend "$BACKEND"
echo "CA and certificates made by \`xdpmesh ca\`:"
for id in sa/client gateway/gw-a gateway/gw-b; do
  echo "   spiffe://rig.mesh/$id   $XM_RIG_STATE/ids/$id/cert.pem"
done
grep -h ' ready' "$XM_RIG_STATE/gwa.log" "$XM_RIG_STATE/gwb.log" | sed 's/^/   /'

# ---------------------------------------------------------------------------------------------
step "4/7 traffic through the mesh"
mesh_answers() { [ "$(cli curl -sS --max-time 2 http://10.10.1.1/ 2>/dev/null)" = v1 ]; }
wait_for 15 "an answer from web v1 through the mesh (curl http://10.10.1.1/ in xm-cli)" mesh_answers
echo "-- curl http://10.10.1.1/ from xm-cli: $(cli curl -sS --max-time 5 http://10.10.1.1/)"
echo "   client -> A (plain HTTP) -> mTLS -> B -> nginx v1 (the only route in the rig's tables)"

echo "-- a 16 MiB download through the mesh, compared with sha256"
cli curl -fsS --max-time 60 -o "$WORK/got" \
  -w '   %{size_download} bytes in %{time_total} s\n' http://10.10.1.1/blob
sum_sent=$(sha256sum <"$WORK/www/blob" | cut -d' ' -f1)
sum_got=$(sha256sum <"$WORK/got" | cut -d' ' -f1)
echo "   sha256 sent $sum_sent, received $sum_got"
[ "$sum_sent" = "$sum_got" ] || fail "the download differs from the file served"
rm -f "$WORK/got"

echo "-- new tables: a canary split web v1 90 % / v2 10 %, a header route, a second identity"
"$XDPMESH_BIN" ca issue --ca "$XM_RIG_STATE/ca" --id spiffe://rig.mesh/sa/intruder \
  --out "$XM_RIG_STATE/ids/sa/intruder" >/dev/null
echo "   xdpmesh ca issue: spiffe://rig.mesh/sa/intruder (a client address 10.10.1.3 speaks as it)"
cli ip addr replace 10.10.1.3/24 dev cli-gwa
gwb_tables >"$WORK/gwb-tables.toml"
gwa_tables 10 >"$WORK/gwa-tables-10.toml"
gwa_tables 50 >"$WORK/gwa-tables-50.toml"
put_tables xm-gwb "$WORK/gwb-tables.toml"
put_tables xm-gwa "$WORK/gwa-tables-10.toml"

n=500
echo "-- canary split: $n requests on one keep-alive connection"
t0=$(date +%s%N)
requests "$n" >"$WORK/split.out" || fail "curl through the mesh failed"
ms=$((($(date +%s%N) - t0) / 1000000))
read -r v1 v2 ok total <<<"$(count "$WORK/split.out")"
echo "   v1: $v1   v2: $v2   (HTTP 200: $ok of $total, in $ms ms)"
if [ "$ok" -ne "$n" ] || [ "$total" -ne "$n" ]; then fail "only $ok of $n requests got 200"; fi
# 10 % of 500 is 50 (standard deviation 6.7): 25..80 holds unless the split is wrong.
if [ "$v2" -lt 25 ] || [ "$v2" -gt 80 ]; then fail "v2 got $v2 of $n, not about 10 %"; fi
echo "-- the split's golden metrics, from gw-a's /metrics (not from the bodies above):"
echo "   xdpmesh_requests_total and xdpmesh_request_duration_seconds{route=\"split\"} per endpoint"
wait_for 5 "gw-a's xdpmesh_requests_total{route=\"split\"} to count v1 $v1 and v2 $v2, all successes" \
  split_counted "$v1" "$v2"
awk 'BEGIN { printf "   %-16s %-7s %8s %8s %10s %10s\n", "endpoint", "version", "requests", "success", "p50", "p99" }
  { printf "   %-16s %-7s %8d %7.1f%% %7.3f ms %7.3f ms\n", $1, ($1 ~ /:8080$/ ? "v1" : "v2"),
      $2, 100 * $3 / $2, 1000 * $4, 1000 * $5 }' "$WORK/golden.out"
echo "   (PromQL: sum by (endpoint) (rate(xdpmesh_requests_total{route=\"split\"}[1m])), and"
echo "    histogram_quantile(0.99, sum by (endpoint, le) (rate(xdpmesh_request_duration_seconds_bucket{route=\"split\"}[1m]))))"

echo "-- header route: 20 requests with 'city: berlin'"
requests 20 -H 'city: berlin' >"$WORK/berlin.out" || fail "curl through the mesh failed"
read -r v1 v2 ok total <<<"$(count "$WORK/berlin.out")"
echo "   v1: $v1   v2: $v2   (HTTP 200: $ok of $total)"
if [ "$v2" -ne 20 ] || [ "$ok" -ne 20 ]; then fail "city: berlin should go to v2 only"; fi

echo "-- a denied call: from 10.10.1.3, which speaks as spiffe://rig.mesh/sa/intruder"
denied_before=$(metric xm-gwb xdpmesh_proxy_refused_total 'reason="denied"') ||
  fail "gw-b's /metrics did not answer"
code=$(cli curl -sS --max-time 10 --interface 10.10.1.3 -o "$WORK/denied.out" -w '%{http_code}' \
  http://10.10.1.1/) || true
denied_after=$(metric xm-gwb xdpmesh_proxy_refused_total 'reason="denied"') ||
  fail "gw-b's /metrics did not answer"
echo "   HTTP $code: $(tr -d '\n' <"$WORK/denied.out" | head -c 120)"
echo "   gw-b xdpmesh_proxy_refused_total{reason=\"denied\"}: $denied_before -> $denied_after"
[ "$code" = 403 ] || fail "the intruder got HTTP '$code', not 403"
[ "$denied_after" -eq $((denied_before + 1)) ] || fail "gw-b did not count the denied call"
code=$(cli curl -sS --max-time 10 --interface 10.10.1.2 -o /dev/null -w '%{http_code}' \
  http://10.10.1.1/) || true
echo "   the same call from 10.10.1.2 (spiffe://rig.mesh/sa/client): HTTP $code"
[ "$code" = 200 ] || fail "the allowed client got HTTP '$code'"

loaders=4 per=1500 before=600
echo "-- live table reload: $loaders keep-alive clients x $per requests; after $before answers, PUT 50/50"
load_pids=()
for i in $(seq 1 "$loaders"); do
  # A simple command, not the function: $! is then curl itself, which cleanup can stop.
  ip netns exec xm-cli curl -sS -N --max-time 60 -w ' %{http_code} %{num_connects}\n' \
    "http://10.10.1.1/?n=[1-$per]" >"$WORK/load-$i.out" 2>"$WORK/load-$i.err" &
  load_pids+=($!)
  PIDS+=($!)
done
answered() { [ "$(cat "$WORK"/load-*.out | wc -l)" -ge "$before" ]; }
wait_for 60 "$before answers from the load" answered
t0=$(date +%s%N)
for i in $(seq 1 "$loaders"); do
  wc -l <"$WORK/load-$i.out" >"$WORK/load-$i.mark"
done
put_tables xm-gwa "$WORK/gwa-tables-50.toml"
load_rc=0
for pid in "${load_pids[@]}"; do
  wait "$pid" || load_rc=$?
done
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$load_rc" -eq 0 ] || fail "a load client failed (curl exit $load_rc): $(cat "$WORK"/load-*.err)"
for i in $(seq 1 "$loaders"); do
  mark=$(cat "$WORK/load-$i.mark")
  head -n "$mark" "$WORK/load-$i.out" >>"$WORK/reload-before.out"
  tail -n +"$((mark + 1))" "$WORK/load-$i.out" >>"$WORK/reload-after.out"
done
read -r b1 b2 bok btotal <<<"$(count "$WORK/reload-before.out")"
read -r a1 a2 aok atotal <<<"$(count "$WORK/reload-after.out")"
connects=$(cat "$WORK"/load-*.out | awk '{ s += $3 } END { print s }')
echo "   before the reload: v1 $b1  v2 $b2  ($((100 * b2 / btotal)) % v2)"
echo "   after the reload:  v1 $a1  v2 $a2  ($((100 * a2 / atotal)) % v2)"
echo "   requests: $((bok + aok)) of $((loaders * per)) answered 200; TCP connections opened: $connects"
echo "   from the reload to the last answer: $ms ms"
if [ "$((bok + aok))" -ne "$((loaders * per))" ] || [ "$((btotal + atotal))" -ne "$((loaders * per))" ]; then
  fail "requests failed during the reload"
fi
if [ "$connects" -ne "$loaders" ]; then
  fail "connections were dropped during the reload ($connects opened for $loaders clients)"
fi
# Before: about 10 % v2 (a few answers around the switch may count either way); after: about 50 %.
if [ "$((100 * b2 / btotal))" -ge 25 ]; then fail "before the reload v2 had 25 % or more"; fi
if [ "$((100 * a2 / atotal))" -lt 35 ] || [ "$((100 * a2 / atotal))" -gt 65 ]; then
  fail "after the reload v2 is not about 50 %"
fi

# ---------------------------------------------------------------------------------------------
step "5/7 latency through the mesh (xdpmesh-bench)"
echo "-- xdpmesh-bench run http://10.10.1.1/ --rate 2000 --connections 16 --duration 5s --warmup 1s"
if ! cli "$BENCH" run http://10.10.1.1/ --rate 2000 --connections 16 --duration 5s --warmup 1s |
  tee "$WORK/bench.out"; then
  fail "xdpmesh-bench failed"
fi
grep -Eq 'requests: [0-9]+ scheduled, [0-9]+ ok, 0 failed' "$WORK/bench.out" ||
  fail "requests failed under the harness's load"

# ---------------------------------------------------------------------------------------------
step "6/7 metrics and the admin API"
cat <<TXT
Each gateway serves its admin API on 127.0.0.1:9901 inside its own namespace:
  ip netns exec xm-gwa curl -s 127.0.0.1:9901/metrics       # Prometheus text
  ip netns exec xm-gwa curl -s 127.0.0.1:9901/tables        # the tables in force (TOML)
  ip netns exec xm-gwa curl -s -X PUT --data-binary @FILE 127.0.0.1:9901/tables   # check and swap
  ip netns exec xm-gwb curl -s 127.0.0.1:9901/metrics       # gateway B likewise
Also /healthz, /readyz and /config/errors. Logs: $XM_RIG_STATE/gwa.log, gwb.log.
Golden metrics (README, "Telemetry"): xdpmesh_requests_total, xdpmesh_request_duration_seconds,
xdpmesh_tcp_* by direction, listener, route, service, endpoint and identities, on both /metrics.
Grafana: import scripts/grafana/xdpmesh.json (Prometheus as its datasource variable) and let
Prometheus scrape each gateway's 127.0.0.1:9901 from inside its namespace (or through a
forward, as dataplane/tests/telemetry_rig.rs does).
A few of gateway B's metrics now:
TXT
ip netns exec xm-gwb curl -fsS --max-time 5 http://127.0.0.1:9901/metrics |
  grep -E '^xdpmesh_(proxy_refused_total|identity_expiry_seconds|tables_generation)' |
  head -n 12 | sed 's/^/  /' || true

if [ "${XM_DEMO_HOLD:-0}" = 1 ]; then
  echo
  echo "The mesh stays up (XM_DEMO_HOLD=1): press Enter or Ctrl-C to tear it down."
  trap 'exit 0' INT
  read -r _ || true
  trap 'exit 130' INT
fi

# ---------------------------------------------------------------------------------------------
step "7/7 teardown"
echo "demo: every check passed"
