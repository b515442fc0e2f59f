#!/usr/bin/env bash
# Usage: fuzz/run.sh SECONDS [TARGET...]
# Runs every fuzz target (or the named ones) for SECONDS each on its corpus (fuzz/corpus,
# built by fuzz/seed.sh when missing), then prints per target the executions, executions per
# second, peak RSS and whether a crash, timeout or out-of-memory happened. Exits non-zero if
# any did; the input that caused it is kept in fuzz/artifacts/<target>/, the log beside it.
#
# Environment: FUZZ_PARALLEL targets at once (default 1), FUZZ_NICE niceness (default 19, so a
# shared machine's builds keep the CPU), FUZZ_TIMEOUT seconds one input may take (default 10),
# FUZZ_RSS_MB memory limit (default 2048), FUZZ_BUILD_FLAGS extra `cargo fuzz build` flags
# (CI: `--dev`, a quicker build for a short run). See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")"

if (($# < 1)) || ! [[ "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
parallel=${FUZZ_PARALLEL:-1}
niceness=${FUZZ_NICE:-19}
timeout=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}

all=$(cargo +nightly fuzz list | grep -vx seed)
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets <<<"$all"
fi
for target in "${targets[@]}"; do
    if ! grep -qx -- "$target" <<<"$all"; then
        echo "run.sh: no fuzz target named $target (have: $(tr '\n' ' ' <<<"$all"))" >&2
        exit 2
    fi
done

read -ra build_flags <<<"${FUZZ_BUILD_FLAGS:-}"
bin=target/x86_64-unknown-linux-gnu/release
[[ " ${build_flags[*]} " == *" --dev "* ]] && bin=target/x86_64-unknown-linux-gnu/debug
# Build each named target (cargo fuzz build takes one target or all).
if (($# == 0)); then
    cargo +nightly fuzz build "${build_flags[@]}"
else
    for target in "${targets[@]}"; do cargo +nightly fuzz build "${build_flags[@]}" "$target"; done
fi
[[ -d corpus ]] || ./seed.sh
logs=artifacts/logs
mkdir -p "$logs"

run_one() {
    local target=$1 max_len=()
    mkdir -p "corpus/$target" "artifacts/$target"
    # Tokens are capped at 8 KiB: let inputs grow past the cap where tokens are read.
    case $target in verify_token | bearer_header | introspect_form) max_len=(-max_len=10240) ;; esac
    local status=0
    nice -n "$niceness" "$bin/$target" \
        -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss_mb" \
        "${max_len[@]}" -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" "corpus/$target" \
        >"$logs/$target.log" 2>&1 || status=$?
    echo "$status" >"$logs/$target.status"
}

pids=()
for target in "${targets[@]}"; do
    run_one "$target" &
    pids+=($!)
    while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done
done
wait

failed=0
printf '\n%-16s %8s %14s %10s %8s %6s %7s %s\n' \
    target seconds executions exec/s rss_mb cov corpus result
for target in "${targets[@]}"; do
    log=$logs/$target.log
    status=$(cat "$logs/$target.status")
    stat_of() { grep -o "stat::$1: *[0-9]*" "$log" | tail -1 | grep -o '[0-9]*$' || echo '?'; }
    result=ok
    if grep -q 'ERROR: libFuzzer: timeout' "$log"; then
        result=TIMEOUT
    elif grep -qE 'ERROR: libFuzzer: (out-of-memory|malloc limit)' "$log"; then
        result=OOM
    elif ((status != 0)) || grep -qE 'ERROR: (libFuzzer|AddressSanitizer)|panicked at' "$log"; then
        result=CRASH
    fi
    [[ $result == ok ]] || failed=1
    # The last status line: `#N DONE cov: EDGES ft: F corp: ENTRIES/SIZE ...`.
    done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || echo '?')
    corp=$(grep -oE 'corp: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || echo '?')
    printf '%-16s %8s %14s %10s %8s %6s %7s %s\n' "$target" "$seconds" \
        "$(stat_of number_of_executed_units)" "$(stat_of average_exec_per_sec)" \
        "$(stat_of peak_rss_mb)" "$cov" "$corp" "$result"
done
if ((failed)); then
    echo "run.sh: a target crashed, timed out or ran out of memory; inputs in fuzz/artifacts/, logs in $logs/" >&2
    exit 1
fi
