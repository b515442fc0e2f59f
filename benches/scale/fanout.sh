#!/usr/bin/env bash
# What one Redis spends as the number of verifier mirrors grows (issue 11, docs/scale.md): for
# each count in MIRRORS, examples/scale_fanout.rs starts that many real RedisFeed mirrors in one
# process against a private redis-server, measures Redis' CPU with the mirrors idle
# (heartbeats), then with RATE revocations a second, each waiting at the barrier for every
# mirror. Prints a Markdown table on stdout.
#
# Usage: benches/scale/fanout.sh   (env: MIRRORS="1 10 100 1000" RATE=50 DURATION_S=10
#                                        PORT=16391 SKIP_BUILD= PIN=1)
# With PIN=1 (the default on 2+ cores) Redis runs on CPU 1 and the mirrors' process on CPU 0,
# so Redis' figures are its own core's.
set -euo pipefail
cd "$(dirname "$0")/../.."

MIRRORS=${MIRRORS:-"1 10 100 1000"}
RATE=${RATE:-50}
SECONDS_EACH=${DURATION_S:-10}
port=${PORT:-16391}
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then PIN=${PIN:-1}; else PIN=0; fi
redis_cpu=() client_cpu=()
[ "$PIN" != 1 ] || { redis_cpu=(taskset -c 1); client_cpu=(taskset -c 0); }
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --example scale_fanout
# About three connections per mirror, in one process.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
redis_pid=""
cleanup() {
    [ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "| mirrors | idle Redis CPU % | revocations | confirmed by all | p50 / p99 revoke ms | Redis CPU % under load | Redis CPU µs per revocation |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for n in $MIRRORS; do
    # A fresh Redis per count, so that one count's registrations do not weigh on the next.
    "${redis_cpu[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients 10000 --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    REDIS_URL="redis://127.0.0.1:$port/" REDIS_PID=$redis_pid CLK_TCK=$(getconf CLK_TCK) RUST_LOG=warn \
        "${client_cpu[@]}" "${CARGO_TARGET_DIR:-target}"/release/examples/scale_fanout "$n" "$RATE" "$SECONDS_EACH"
    kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
done
echo
echo "settings: RATE=$RATE revocations/s, ${SECONDS_EACH} s idle then ${SECONDS_EACH} s under load per row, pinned: $PIN, $(nproc) cores; load average at the end: $(uptime | sed 's/.*load average: //')"
