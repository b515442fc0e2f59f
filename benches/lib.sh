# Shared by the benchmark scripts (sourced from the repository's root, not run): a work
# directory cleaned up on exit, a private redis-server, and the verifier settings every
# benchmark starts from. The caller has `set -euo pipefail`.

# bench_workdir: a fresh `$work` directory and an empty `pids` array; on exit every PID in
# `pids` is killed and `$work` removed (kept with KEEP_WORK=1).
bench_workdir() {
    work=$(mktemp -d)
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}

# bench_redis PORT: a redis-server on 127.0.0.1:PORT that keeps nothing on disk (never the
# machine's own Redis), its PID added to `pids`; returns once it answers PING.
bench_redis() {
    local port=$1
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
        --daemonize no >"$work/redis-$port.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "redis-server on port $port did not start (see $work/redis-$port.log)" >&2
    return 1
}

# bench_verifier_toml LISTEN_PORT REDIS_PORT KEY_PREFIX: the settings of a benchmark verifier
# (keys in $work/keys, its revocation store the private Redis), on stdout.
bench_verifier_toml() {
    cat <<TOML
[token]
issuer = "https://issuer.bench"
audience = "bench"
[keys]
dir = "$work/keys"
[server]
listen = "127.0.0.1:$1"
[revocation]
redis_url = "redis://127.0.0.1:$2/"
key_prefix = "$3"
TOML
}
