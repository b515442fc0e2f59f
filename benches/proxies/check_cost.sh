#!/usr/bin/env bash
# What one warm check costs the whole verifier process, in instructions (issue 12), for the
# request shapes the integrations send: runs a verifier under `valgrind --tool=callgrind` with
# collection on, warms it up, zeroes the counts (`callgrind_control -z`), sends REQUESTS requests
# over one keep-alive connection, dumps the counts (`-d`), and prints instructions per request of the whole
# process (hyper, axum, tokio, malloc and the decision alike) and where they go.
#
#   query:  GET /v1/verify?tenant=acme&permission=runs:read    (a verifier without routes)
#   route:  GET /v1/verify with X-Forwarded-Method/-Uri from 127.0.0.1  (nginx, Traefik, Caddy)
#   envoy:  GET /v1/verify/api/acme/runs/42 with the headers Envoy's HTTP ext_authz sends
#
# Instruction counts do not move with the machine's load, unlike CPU time on a shared machine;
# they leave out the kernel (system calls) and cache misses.
#
# Usage: benches/proxies/check_cost.sh   (env: REQUESTS=5000 SHAPES="query route envoy"
#        TOP=0 (functions to list per shape) BASE_PORT=18670 SKIP_BUILD= BIN_DIR=target/release)
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${REQUESTS:-5000}
SHAPES=${SHAPES:-query route envoy}
TOP=${TOP:-0}
base=${BASE_PORT:-18670}
redis_port=$((base + 9))
for tool in valgrind callgrind_control callgrind_annotate redis-server python3; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin edgetoken --example mint_many
bin=${BIN_DIR:-target/release}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

"$bin/edgetoken" keygen --dir "$work/keys" >/dev/null
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
config() {
    cat <<TOML
[token]
issuer = "https://issuer.bench"
audience = "bench"
[keys]
dir = "$work/keys"
[server]
listen = "127.0.0.1:$1"
[revocation]
redis_url = "redis://127.0.0.1:$redis_port/"
key_prefix = "check-cost"
TOML
    # Every shape but query mode runs with the demo's routes, as deployed behind a proxy.
    [ "$2" = query ] || sed -n '/^\[verifier\]/,$p' deploy/verifier.toml
}
config "$base" query >"$work/mint.toml"
"$bin/examples/mint_many" "$work/mint.toml" "$work/warm.txt" 1
token=$(head -1 "$work/warm.txt")

# measure SHAPE PORT: prints "SHAPE INSTRUCTIONS_PER_REQUEST", and the top functions if TOP>0
measure() {
    local shape=$1 port=$2
    config "$port" "$shape" >"$work/$shape.toml"
    env RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind \
        --callgrind-out-file="$work/callgrind.$shape" \
        "$bin/edgetoken" serve --config "$work/$shape.toml" --role verifier \
        >"$work/$shape.log" 2>&1 &
    local vpid=$!
    pids+=("$vpid")
    python3 - "$shape" "$port" "$token" "$REQUESTS" "$vpid" <<'PY'
import http.client, subprocess, sys, time
shape, port, token, n, vpid = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
auth = {"Authorization": f"Bearer {token}"}
if shape == "query":
    target, headers = "/v1/verify?tenant=acme&permission=runs:read", auth
elif shape == "route":
    target = "/v1/verify"
    headers = {**auth, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/acme/runs/42",
               "X-Forwarded-Proto": "http", "X-Forwarded-Host": "edge.example"}
else:
    # What Envoy 1.40's HTTP ext_authz sends for GET /api/acme/runs/42 with deploy/envoy/edge.yaml.
    target = "/v1/verify/api/acme/runs/42"
    headers = {**auth, "x-real-ip": "10.0.0.7", "x-envoy-expected-rq-timeout-ms": "250",
               "x-forwarded-proto": "http", "x-envoy-internal": "true",
               "x-forwarded-for": "10.0.0.7", "content-length": "0"}
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", target, headers=headers)
        r = c.getresponse(); r.read()
        if r.status == 200:
            break
        sys.exit(f"{shape}: answered {r.status}")
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit(f"verifier on {port} never answered 200")
    time.sleep(0.5)
def run(count):
    for _ in range(count):
        c.request("GET", target, headers=headers)
        r = c.getresponse(); r.read()
        if r.status != 200:
            sys.exit(f"{shape}: answered {r.status}")
run(500)  # warm: caches, memos, the connection's buffers
subprocess.run(["callgrind_control", "-z", vpid], check=True, capture_output=True)
run(n)
subprocess.run(["callgrind_control", "-d", vpid], check=True, capture_output=True)
PY
    kill -INT "$vpid"
    wait "$vpid" 2>/dev/null || true
    local total
    local dump
dump=$(ls "$work/callgrind.$shape".* 2>/dev/null | head -1)
    [ -n "$dump" ] || { echo "$shape: callgrind wrote no dump" >&2; exit 1; }
    total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
    awk -v s="$shape" -v t="$total" -v n="$REQUESTS" 'BEGIN { printf "%s %.0f\n", s, t / n }'
    if [ "$TOP" -gt 0 ]; then
        callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
            sed -n '/^Ir/,$p' | sed -n "3,$((TOP + 2))p" >"$work/top.$shape"
    fi
}

port=$base
results=()
for shape in $SHAPES; do
    results+=("$(measure "$shape" "$port")")
    port=$((port + 1))
done
echo "| request shape | instructions per request (whole verifier process) |"
echo "| --- | ---: |"
for line in "${results[@]}"; do
    set -- $line
    echo "| $1 | $2 |"
done
echo
echo "($REQUESTS warm requests per shape over one connection, after 500 to warm up)"
if [ "$TOP" -gt 0 ]; then
    for shape in $SHAPES; do
        echo
        echo "$shape: top $TOP functions, inclusive instructions over $REQUESTS requests"
        cat "$work/top.$shape"
    done
fi
