#!/usr/bin/env bash
# The resync storm (issue 11, docs/scale.md): for each mirror count in MIRRORS and each
# revocation count in REVOCATIONS, examples/scale_storm.rs starts that many real RedisFeed
# mirrors following a private redis-server that holds that many live revocations, then this
# script's restart hook stops Redis (SIGTERM) and starts it again on the same port. Its run_id
# changes, so every mirror re-seeds (writes back all it holds), publishes `resync` and resyncs
# in full. Prints a Markdown table on stdout.
#
# Usage: benches/scale/storm.sh   (env: MIRRORS="100 1000" REVOCATIONS="10000 100000"
#                                       MODE=aof|empty PORT=16392 LIMIT_S=240 SKIP_BUILD= PIN=1
#                                       COMMAND_TIMEOUT_MS=2000: the feeds' command timeout,
#                                       BULK_TIMEOUT_MS=30000: their bulk steps' timeout)
# MODE=aof (default): appendonly yes, appendfsync everysec; the restart keeps the data.
# MODE=empty: no persistence; Redis comes back empty and the mirrors restore it.
# With PIN=1 (the default on 2+ cores) Redis runs on CPU 1 and the mirrors' process on CPU 0.
set -euo pipefail
cd "$(dirname "$0")/../.."

MIRRORS=${MIRRORS:-"100 1000"}
REVOCATIONS=${REVOCATIONS:-"10000 100000"}
MODE=${MODE:-aof}
LIMIT_S=${LIMIT_S:-240}
port=${PORT:-16392}
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then PIN=${PIN:-1}; else PIN=0; fi
redis_cpu="" client_cpu=()
[ "$PIN" != 1 ] || { redis_cpu="taskset -c 1"; client_cpu=(taskset -c 0); }
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --example scale_storm
# About three connections per mirror, in one process.
ulimit -n "$(ulimit -Hn)"

case "$MODE" in
    aof) persistence="--appendonly yes --appendfsync everysec --save ''" ;;
    empty) persistence="--appendonly no --save ''" ;;
    *) echo "MODE is aof or empty" >&2; exit 2 ;;
esac

work=$(mktemp -d)
cleanup() {
    if [ -s "$work/redis.pid" ]; then kill "$(cat "$work/redis.pid")" 2>/dev/null || true; fi
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT

# Starts Redis daemonized (its pid in redis.pid) and waits until it answers PING (not LOADING).
cat >"$work/start.sh" <<EOF
set -eu
rm -f "$work/redis.pid"
$redis_cpu redis-server --port $port --bind 127.0.0.1 $persistence --maxclients 10000 \
    --dir "$work" --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
for _ in \$(seq 600); do
    [ "\$(redis-cli -p $port ping 2>/dev/null)" = PONG ] && [ -s "$work/redis.pid" ] && break
    sleep 0.05
done
cat "$work/redis.pid"
EOF
# The storm's trigger: stop Redis (SIGTERM: it flushes the AOF), wait until it is gone, start it
# again with the same data directory; print the new pid.
cat >"$work/restart.sh" <<EOF
set -eu
pid=\$(cat "$work/redis.pid")
kill "\$pid"
while kill -0 "\$pid" 2>/dev/null; do sleep 0.01; done
sh "$work/start.sh"
EOF

echo "| mirrors | revocations | Redis restarts | Redis answers (s) | first re-seed (s) | mirror recovered p50 / p90 / max (s) | all settled (s) | Redis CPU (s) | Redis CPU % | mirrors' process CPU (s) | entries written back | re-seeds | full resyncs | reconnects | MiB in / out of Redis | peak used_memory (MiB) | peak client output buffer (KiB) | peak clients |"
echo "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for r in $REVOCATIONS; do
    for n in $MIRRORS; do
        # A fresh Redis (and data directory) per row.
        rm -rf "$work"/appendonlydir "$work"/*.rdb
        pid=$(sh "$work/start.sh")
        REDIS_URL="redis://127.0.0.1:$port/" REDIS_PID=$pid REDIS_RESTART="sh $work/restart.sh" \
            STORM_MODE=$MODE STORM_LIMIT_S=$LIMIT_S CLK_TCK=$(getconf CLK_TCK) RUST_LOG=error \
            "${client_cpu[@]}" "${CARGO_TARGET_DIR:-target}"/release/examples/scale_storm "$n" "$r" >"$work/out" || {
            cat "$work/out"; echo "scale_storm failed (mirrors $n, revocations $r)" >&2; exit 1; }
        head -n 1 "$work/out"
        tail -n +2 "$work/out" >>"$work/details"
        pid=$(cat "$work/redis.pid")
        kill "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        echo "(mirrors $n, revocations $r, load average at the end: $(uptime | sed 's/.*load average: //'))" >>"$work/details"
    done
done
echo
echo "settings: MODE=$MODE, limit ${LIMIT_S} s a row, pinned: $PIN, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end: $(uptime | sed 's/.*load average: //')"
cat "$work/details"
