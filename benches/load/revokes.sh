#!/usr/bin/env bash
# Revokes per second through the issuer's RFC 7009 endpoint, each confirmed by one replica:
# `POST /v1/revoke` with a token never revoked before, against a private primary with one
# replica (so `min_replicas_acked` = 1: every revoke's write waits for the replica with
# `WAIT`, and concurrent revokes share one `WAIT`: group commit, README "Durable
# acknowledgement").
#
# Usage: benches/load/revokes.sh   (env: DURATION=5s CONNECTIONS=16 THREADS=2 TOKENS=60000
#                                        PIN=1 SKIP_BUILD= BIN_DIR=target/release)
# Compare two builds in one run by calling it with BIN_DIR set to each, alternating. The issuer
# runs on CPU 1 and wrk on CPU 0 (taskset) when PIN=1, as benches/load/run.sh does; the two
# redis-servers are not pinned. TOKENS must exceed the revokes a run makes, or the rest are
# answered without a write (an already revoked token is not a valid one). Prints wrk's figures
# and how many revocations Redis holds afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-60000}
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then PIN=${PIN:-1}; else PIN=0; fi
server_cpu=() client_cpu=()
if [ "$PIN" = 1 ]; then server_cpu=(taskset -c 1); client_cpu=(taskset -c 0); fi
PRIMARY_PORT=${PRIMARY_PORT:-18601}
REPLICA_PORT=${REPLICA_PORT:-18602}
ISSUER_PORT=${ISSUER_PORT:-18603}

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin edgetoken --example mint_many
bin=${BIN_DIR:-target/release}

. benches/lib.sh
bench_workdir

bench_redis "$PRIMARY_PORT"
redis-server --port "$REPLICA_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --replicaof 127.0.0.1 "$PRIMARY_PORT" --daemonize no >"$work/replica.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    redis-cli -p "$PRIMARY_PORT" info replication | grep -q "state=online" && break
    sleep 0.1
done
redis-cli -p "$PRIMARY_PORT" info replication | grep -q "state=online" ||
    { echo "the replica never came online (see $work/replica.log)" >&2; exit 1; }

"$bin/edgetoken" keygen --dir "$work/keys" >/dev/null
cp deploy/users.toml "$work/users.toml"
{
    bench_verifier_toml "$ISSUER_PORT" "$PRIMARY_PORT" revokes-bench
    printf '[issuer]\ndirectory = "%s/users.toml"\n' "$work"
    printf '[permissions]\ncategories = ["runs", "policies", "detections", "members"]\n'
} >"$work/issuer.toml"
"$bin/examples/mint_many" "$work/issuer.toml" "$work/tokens.txt" "$TOKENS"

env RUST_LOG=warn "${server_cpu[@]}" "$bin/edgetoken" serve --config "$work/issuer.toml" \
    --role issuer >"$work/issuer.log" 2>&1 &
pids+=($!)
ready="http://127.0.0.1:$ISSUER_PORT/readyz"
for _ in $(seq 100); do curl -fs -o /dev/null "$ready" && break; sleep 0.1; done
durability=$(curl -fs "$ready" | python3 -c \
    'import json, sys; d = json.load(sys.stdin)["revocation"]["durability"]; print(d["level"], d["min_replicas_acked"])')
[ "$durability" = "replicated 1" ] ||
    { echo "the issuer does not wait for the replica: $durability" >&2; cat "$work/issuer.log" >&2; exit 1; }

"${client_cpu[@]}" wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency \
    -s benches/load/revokes.lua "http://127.0.0.1:$ISSUER_PORT" -- "$work/tokens.txt" "$THREADS" \
    >"$work/wrk.out"
grep -E "Requests/sec|requests in|Non-2xx|  50%|  99%" "$work/wrk.out"
echo "revocations in Redis: $(redis-cli -p "$PRIMARY_PORT" zcard '{revokes-bench}:tok')"
