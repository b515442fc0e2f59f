#!/usr/bin/env bash
# Which system calls the verifier makes per check behind one proxy (issue 12): runs
# benches/proxies/run.sh for one configuration (CONFIG, default envoy_grpc), and in the middle
# of the load counts the verifier's system calls by type (`perf stat -e
# syscalls:sys_enter_*` on its PID for WINDOW seconds), divided by the checks it passed in
# that window (edgetoken_verify_total{outcome="ok"} from its /metrics before and after).
# Shows, for example, how many answers leave in one write.
#
# Usage: benches/proxies/syscall_mix.sh   (env: CONFIG=envoy_grpc WINDOW=10 DURATION=25s
#        BASE_PORT=18610 and run.sh's SKIP_BUILD, BIN_DIR, VERIFIER_SCHED)
set -euo pipefail
cd "$(dirname "$0")/../.."

CONFIG=${CONFIG:-envoy_grpc}
WINDOW=${WINDOW:-10}
base=${BASE_PORT:-18610}
# run.sh's ports: the route-mode verifier's HTTP listener, and its gRPC one.
http_port=$((base + 1))
probe_port=$http_port
[ "$CONFIG" != envoy_grpc ] || probe_port=$((base + 3))
for tool in perf curl ss; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done
events=""
for call in read write writev recvfrom sendto recvmsg sendmsg epoll_wait futex; do
    events+="${events:+,}syscalls:sys_enter_$call"
done
perf stat -e syscalls:sys_enter_writev true >/dev/null 2>&1 ||
    { echo "perf cannot count syscall tracepoints here (needs root or perf_event_paranoid)" >&2; exit 2; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
ONLY=$CONFIG ROUNDS=1 DURATION=${DURATION:-25s} benches/proxies/run.sh >"$log" 2>&1 &
bench=$!
# The load has started once wrk runs; give the first second to connection set-up.
for _ in $(seq 600); do pgrep -x wrk >/dev/null && break; sleep 0.5; done
pgrep -x wrk >/dev/null || { cat "$log" >&2; echo "the load never started" >&2; exit 1; }
sleep 3
pid=$(ss -ltnpH "sport = :$probe_port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
[ -n "$pid" ] || { echo "no verifier listens on $probe_port" >&2; exit 1; }
passed() {
    curl -sf "http://127.0.0.1:$http_port/metrics" |
        awk '/^edgetoken_verify_total\{outcome="ok"\}/ {printf "%d", $2}'
}
before=$(passed)
counts=$(perf stat -x, -e "$events" -p "$pid" -- sleep "$WINDOW" 2>&1 >/dev/null)
after=$(passed)
wait "$bench" || { cat "$log" >&2; exit 1; }
checks=$((after - before))
[ "$checks" -gt 0 ] || { echo "no checks passed during the window" >&2; exit 1; }
echo "| $CONFIG: system call | per check ($checks checks in ${WINDOW} s) |"
echo "| --- | ---: |"
awk -F, -v n="$checks" '$3 ~ /sys_enter_/ {sub(/.*sys_enter_/, "", $3); printf "| %s | %.3f |\n", $3, $1 / n}' <<<"$counts"
