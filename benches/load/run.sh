#!/usr/bin/env bash
# HTTP load benchmark (SPEC §9): forward-auth RPS and p99 against bare axum, measured in the
# same run, on the same machine, with the same tool and settings.
#
#   warm:  GET /v1/verify?tenant=acme&permission=runs:read with a pool of 100 valid tokens
#          (verified-token cache hits; revocation, time and requirement still checked)
#          vs bare axum GET /ok (returns 200, nothing else)
#   cold:  the same /v1/verify, every request a token never seen before
#          vs bare axum GET /strict doing one ed25519 verify_strict per request on the same
#          kind of never-seen token
#   usage: the warm run above (token usage recorded, the default) vs the same warm requests
#          to a second verifier with [usage] enabled = false (issue 10; target >= 0.97); and
#          the cold run likewise (every request a new token: a new usage slot each), for
#          information
#
# Usage: benches/load/run.sh   (env: DURATION=10s CONNECTIONS=32 THREADS=2 COLD_TOKENS=250000
#                                    PIN=1 SKIP_BUILD= BIN_DIR=target/release)
# With PIN=1 (the default on a machine with 2 or more cores) the servers run on CPU 1 and wrk
# on CPU 0 (taskset), so the load generator never steals the servers' core and the two sides
# of each ratio get the same, whole CPU; without pinning, runs on 2 cores vary by +-20%.
# Needs wrk and a Rust toolchain; builds in release. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
COLD_TOKENS=${COLD_TOKENS:-250000}   # per round
ROUNDS=${ROUNDS:-3}
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then PIN=${PIN:-1}; else PIN=0; fi
server_cpu=() client_cpu=()
if [ "$PIN" = 1 ]; then
    server_cpu=(taskset -c 1); client_cpu=(taskset -c 0)
    # One core for the servers, so one tokio worker each: two workers time-sharing a core only
    # add preemption inside locks (the verified-token cache has some; bare axum has none).
    export TOKIO_WORKER_THREADS=1
fi
VERIFIER_PORT=${VERIFIER_PORT:-18481}
BARE_PORT=${BARE_PORT:-18482}
USAGE_OFF_PORT=${USAGE_OFF_PORT:-18484}

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 2; }
# SKIP_BUILD=1 and BIN_DIR=DIR (edgetoken, examples/bare_axum, examples/mint_many): a build made
# earlier, to compare two builds with the same script.
[ -n "${SKIP_BUILD:-}" ] ||
    cargo build --release --quiet --bin edgetoken --example bare_axum --example mint_many
bin=${BIN_DIR:-target/release}

. benches/lib.sh
bench_workdir

"$bin/edgetoken" keygen --dir "$work/keys" >/dev/null
# A verifier alone needs the shared revocation store: a private redis-server, never the
# machine's own. Verification never touches it (the mirror is in memory); only the feed does.
REDIS_PORT=${REDIS_PORT:-18483}
bench_redis "$REDIS_PORT"
bench_verifier_toml "$VERIFIER_PORT" "$REDIS_PORT" load-bench >"$work/edgetoken.toml"
# The same verifier with token usage off, for the usage on / off pair.
sed "s/127.0.0.1:$VERIFIER_PORT/127.0.0.1:$USAGE_OFF_PORT/" "$work/edgetoken.toml" >"$work/usage-off.toml"
printf '[usage]\nenabled = false\n' >>"$work/usage-off.toml"

echo "minting $ROUNDS x $COLD_TOKENS cold tokens and 100 warm ones..." >&2
for round in $(seq "$ROUNDS"); do
    "$bin/examples/mint_many" "$work/edgetoken.toml" "$work/cold-$round.txt" "$COLD_TOKENS"
done
"$bin/examples/mint_many" "$work/edgetoken.toml" "$work/warm.txt" 100

env RUST_LOG=warn "${server_cpu[@]}" "$bin/edgetoken" serve --config "$work/edgetoken.toml" --role verifier \
    >"$work/verifier.log" 2>&1 &
pids+=($!)
env RUST_LOG=warn "${server_cpu[@]}" "$bin/edgetoken" serve --config "$work/usage-off.toml" --role verifier \
    >"$work/verifier-usage-off.log" 2>&1 &
pids+=($!)
"${server_cpu[@]}" "$bin/examples/bare_axum" "127.0.0.1:$BARE_PORT" "$work/keys" >"$work/bare.log" 2>&1 &
pids+=($!)
for url in "http://127.0.0.1:$VERIFIER_PORT/readyz" "http://127.0.0.1:$USAGE_OFF_PORT/readyz" \
    "http://127.0.0.1:$BARE_PORT/ok"; do
    for _ in $(seq 100); do curl -fs -o /dev/null "$url" && break; sleep 0.1; done
    curl -fs -o /dev/null "$url" || { echo "$url never answered" >&2; cat "$work"/*.log >&2; exit 1; }
done

verify="http://127.0.0.1:$VERIFIER_PORT/v1/verify?tenant=acme&permission=runs:read"
verify_usage_off="http://127.0.0.1:$USAGE_OFF_PORT/v1/verify?tenant=acme&permission=runs:read"
# Sanity: each side answers 200 to what it will be measured on.
warm_token=$(head -1 "$work/warm.txt")
for url in "$verify" "$verify_usage_off" "http://127.0.0.1:$BARE_PORT/strict"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $warm_token" "$url")
    [ "$code" = 200 ] || { echo "$url answered $code, not 200" >&2; exit 1; }
done

# run NAME URL [TOKEN_FILE]: prints "RPS P99_MS NON2XX"
run() {
    local args=(-t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency)
    if [ -n "${3:-}" ]; then
        args+=(-s benches/load/tokens.lua "$2" -- "$3" "$THREADS")
    else
        args+=("$2")
    fi
    "${client_cpu[@]}" wrk "${args[@]}" >"$work/wrk-$1.out"
    local rps p99 non2xx
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk-$1.out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk-$1.out")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk-$1.out")
    local requests
    requests=$(awk '/requests in/ {print $1}' "$work/wrk-$1.out")
    echo "$rps $p99 ${non2xx:-0} $requests"
}

# Each pair is measured back to back, ROUNDS times, alternating sides, so a slow spell of the
# machine lands on both sides of a ratio; each cold round walks its own never-seen tokens.
# The usage-on verifier writes a cold round's usage (every token new: up to 200,000 per
# interval, in pipelines of 10,000) for some seconds after it; that work, and Redis', must not
# land in the next round's measurements. Wait until its flush counters stop moving for longer
# than one flush interval (10 s).
usage_counters() {
    curl -s "http://127.0.0.1:$VERIFIER_PORT/metrics" \
        | awk '/^edgetoken_usage_(flushed|dropped)_total/ {s += $2} END {print s + 0}'
}
settle_usage() {
    local before after
    after=$(usage_counters)
    for _ in $(seq 10); do
        sleep 11
        before=$after
        after=$(usage_counters)
        [ "$before" = "$after" ] && return
    done
    echo "usage counters still moving after 110 s" >&2
}

rows=() warm_ratios=() cold_ratios=() usage_rows=() usage_ratios=()
for round in $(seq "$ROUNDS"); do
    [ "$round" = 1 ] || settle_usage
    read -r b_rps b_p99 b_bad _ < <(run "bare-ok-$round" "http://127.0.0.1:$BARE_PORT/ok" "$work/warm.txt")
    read -r w_rps w_p99 w_bad _ < <(run "warm-$round" "$verify" "$work/warm.txt")
    read -r o_rps o_p99 o_bad _ < <(run "warm-usage-off-$round" "$verify_usage_off" "$work/warm.txt")
    usage_ratios+=("$(awk -v a="$w_rps" -v b="$o_rps" 'BEGIN {printf "%.2f", a / b}')")
    usage_rows+=("| $round | $o_rps | $w_rps | **${usage_ratios[-1]}** | $o_p99 / $w_p99 | $((o_bad + w_bad)) |")
    read -r s_rps s_p99 s_bad s_n < <(run "bare-strict-$round" "http://127.0.0.1:$BARE_PORT/strict" "$work/cold-$round.txt")
    read -r c_rps c_p99 c_bad c_n < <(run "cold-$round" "$verify" "$work/cold-$round.txt")
    # The same never-seen tokens: never seen by this verifier either.
    read -r co_rps co_p99 co_bad _ < <(run "cold-usage-off-$round" "$verify_usage_off" "$work/cold-$round.txt")
    usage_rows[-1]+=" $co_rps | $c_rps | $(awk -v a="$c_rps" -v b="$co_rps" 'BEGIN {printf "%.2f", a / b}') | $co_p99 / $c_p99 | $co_bad |"
    warm_ratios+=("$(awk -v a="$w_rps" -v b="$b_rps" 'BEGIN {printf "%.2f", a / b}')")
    cold_ratios+=("$(awk -v a="$c_rps" -v b="$s_rps" 'BEGIN {printf "%.2f", a / b}')")
    rows+=("| $round | $b_rps | $w_rps | **${warm_ratios[-1]}** | $s_rps | $c_rps | **${cold_ratios[-1]}** | $b_p99 / $w_p99 | $s_p99 / $c_p99 | $((b_bad + w_bad + s_bad + c_bad)) |")
    [ "$c_n" -le "$COLD_TOKENS" ] || echo "round $round: $c_n cold requests for $COLD_TOKENS tokens: raise COLD_TOKENS" >&2
done

echo "verifier outcomes after all runs:" >&2
curl -s "http://127.0.0.1:$VERIFIER_PORT/metrics" | grep '^edgetoken_verify_total' | grep -v ' 0$' >&2 || true
echo "token usage on the usage-on verifier:" >&2
curl -s "http://127.0.0.1:$VERIFIER_PORT/metrics" | grep '^edgetoken_usage_' >&2 || true

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
echo "| round | bare 200 rps | warm rps | warm / bare | bare strict rps | cold rps | cold / strict | p99 bare / warm (ms) | p99 strict / cold (ms) | non-2xx |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"
printf '%s\n' "${rows[@]}"
echo
echo "| round | warm, usage off rps | warm, usage on rps | on / off | p99 off / on (ms) | non-2xx | cold, usage off rps | cold, usage on rps | on / off | cold p99 off / on (ms) | non-2xx |"
echo "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |"
printf '%s\n' "${usage_rows[@]}"
echo
echo "median warm / bare 200: $(median "${warm_ratios[@]}") (target >= 0.90)"
echo "median cold / bare verify_strict: $(median "${cold_ratios[@]}") (target >= 0.90)"
echo "median warm usage on / usage off: $(median "${usage_ratios[@]}") (target >= 0.97)"
echo "settings: wrk -t $THREADS -c $CONNECTIONS -d $DURATION, $ROUNDS rounds, $(nproc) cores, pinned: $PIN"
