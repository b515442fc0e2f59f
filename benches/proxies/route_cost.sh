#!/usr/bin/env bash
# What route mode costs the verifier against query mode, in instructions (issue 12): runs a
# verifier under `valgrind --tool=callgrind`, collecting only inside the forward-auth decision
# and answer (`--toggle-collect` on `verifier::answer`, which finds the requirement, verifies
# the token and builds the 200), and sends it N warm requests over one keep-alive connection,
# once per mode:
#
#   query: GET /v1/verify?tenant=acme&permission=runs:read   (a verifier without routes)
#   route: GET /v1/verify with X-Forwarded-Method: GET, X-Forwarded-Uri: /api/acme/runs/42
#          from 127.0.0.1 (trusted), against deploy/verifier.toml's routes
#
# Instruction counts do not move with the machine's load, unlike CPU time on a shared machine.
# Prints instructions per request of the decision for each mode.
#
# Usage: benches/proxies/route_cost.sh   (env: REQUESTS=20000 BASE_PORT=18650 SKIP_BUILD=
#                                              BIN_DIR=target/release)
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${REQUESTS:-20000}
base=${BASE_PORT:-18650}
redis_port=$((base + 2))
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin edgetoken --example mint_many
bin=${BIN_DIR:-target/release}

. benches/lib.sh
bench_workdir

"$bin/edgetoken" keygen --dir "$work/keys" >/dev/null
bench_redis "$redis_port"
common() { bench_verifier_toml "$1" "$redis_port" route-cost; }
common "$base" >"$work/query.toml"
{ common "$((base + 1))"; sed -n '/^\[verifier\]/,$p' deploy/verifier.toml; } >"$work/route.toml"
"$bin/examples/mint_many" "$work/query.toml" "$work/warm.txt" 1
token=$(head -1 "$work/warm.txt")

# measure MODE PORT URL_PATH [HEADER...]: instructions collected over REQUESTS requests, into
# $work/count.MODE (run in this shell, not a subshell, so the EXIT trap knows its verifier)
measure() {
    local mode=$1 port=$2 target=$3; shift 3
    env RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind \
        --callgrind-out-file="$work/callgrind.$mode" \
        "--toggle-collect=edgetoken::http::verifier::answer" \
        "$bin/edgetoken" serve --config "$work/$mode.toml" --role verifier \
        >"$work/$mode.log" 2>&1 &
    local vpid=$!
    pids+=("$vpid")
    python3 - "$port" "$target" "$token" "$REQUESTS" "$@" <<'PY'
import http.client, sys, time
port, target, token, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
headers = {"Authorization": f"Bearer {token}"}
for h in sys.argv[5:]:
    name, value = h.split(": ", 1)
    headers[name] = value
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", target, headers=headers)
        r = c.getresponse(); r.read()
        if r.status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit(f"verifier on {port} never answered 200")
    time.sleep(0.5)
for _ in range(n - 1):
    c.request("GET", target, headers=headers)
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"answered {r.status}")
PY
    kill -INT "$vpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
    awk '/^summary:|^totals:/ {print $2; exit}' "$work/callgrind.$mode" >"$work/count.$mode"
}

measure query "$base" "/v1/verify?tenant=acme&permission=runs:read"
measure route "$((base + 1))" "/v1/verify" \
    "X-Forwarded-Method: GET" "X-Forwarded-Uri: /api/acme/runs/42"
q_handler=$(cat "$work/count.query")
r_handler=$(cat "$work/count.route")
awk -v q="$q_handler" -v r="$r_handler" -v n="$REQUESTS" 'BEGIN {
    printf "| mode | answer (decision and 200): instructions per request |\n| --- | ---: |\n"
    printf "| query | %.0f |\n| route | %.0f |\n", q / n, r / n
    printf "\nroute - query: %.0f instructions per request (%d requests each)\n", (r - q) / n, n
}'
