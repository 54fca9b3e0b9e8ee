# shellcheck shell=bash
# Shared by the benchmark scripts (bench.sh, bench-h2.sh, bench-loss.sh). Source it after
# scripts/lib/deps.sh; it defines functions only.

# xm_wait_listen NS PORT: waits up to 15 s for a TCP listener on PORT in namespace NS.
xm_wait_listen() {
  local ns=$1 port=$2 deadline=$((SECONDS + 15))
  while [ -z "$(ip netns exec "$ns" ss -Hltn "sport = :$port")" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      xm_log "${0##*/}: nothing listens on port $port in $ns after 15 s"
      return 1
    fi
    sleep 0.05
  done
}
