#!/usr/bin/env bash
# What one revocation costs Redis, command by command (issue 11, docs/scale.md): runs
# examples/scale_fanout.rs with MIRRORS mirrors and COMMANDSTATS=1 against a private
# redis-server, so it prints `INFO commandstats` per revocation over the load window. With
# PERF=1 it also samples Redis with `perf record -e cpu-clock` during that window and prints
# the top of `perf report` (needs perf; no hardware counters needed).
#
# Usage: benches/scale/revoke_cost.sh   (env: MIRRORS=1 RATE=50 DURATION_S=10 PORT=16393
#                                             PERF= SKIP_BUILD= PIN=1)
set -euo pipefail
cd "$(dirname "$0")/../.."

MIRRORS=${MIRRORS:-1}
RATE=${RATE:-50}
SECONDS_EACH=${DURATION_S:-10}
port=${PORT:-16393}
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then PIN=${PIN:-1}; else PIN=0; fi
redis_cpu=() client_cpu=()
[ "$PIN" != 1 ] || { redis_cpu=(taskset -c 1); client_cpu=(taskset -c 0); }
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --example scale_fanout
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
redis_pid="" perf_pid=""
cleanup() {
    [ -z "$perf_pid" ] || kill -INT "$perf_pid" 2>/dev/null || true
    [ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"${redis_cpu[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --maxclients 10000 --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "| mirrors | idle Redis CPU % | revocations | confirmed by all | p50 / p99 revoke ms | Redis CPU % under load | Redis CPU µs per revocation |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
COMMANDSTATS=1 REDIS_URL="redis://127.0.0.1:$port/" REDIS_PID=$redis_pid CLK_TCK=$(getconf CLK_TCK) \
    RUST_LOG=warn "${client_cpu[@]}" "${CARGO_TARGET_DIR:-target}"/release/examples/scale_fanout "$MIRRORS" "$RATE" "$SECONDS_EACH" &
example=$!
if [ -n "${PERF:-}" ]; then
    # The example spends about 2 s settling and SECONDS_EACH idle before the load starts.
    sleep $((SECONDS_EACH + 4))
    perf record -q -e cpu-clock -F 4999 -g -p "$redis_pid" -o "$work/perf.data" -- sleep $((SECONDS_EACH - 2)) \
        >/dev/null 2>&1 &
    perf_pid=$!
fi
wait "$example"
if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    perf_pid=""
    echo
    echo "perf (cpu-clock samples of redis-server during the load, self time), by object:"
    echo
    perf report -i "$work/perf.data" --no-children --sort dso --stdio 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | head -n 8 || true
    echo
    echo "by symbol:"
    echo
    perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | head -n 25 || true
fi
echo
echo "settings: MIRRORS=$MIRRORS RATE=$RATE DURATION_S=$SECONDS_EACH, pinned: $PIN; $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end: $(uptime | sed 's/.*load average: //')"
