#!/usr/bin/env bash
# What route mode costs the verifier against query mode, in instructions (issue 12): the
# instructions run inside the forward-auth decision and answer (`verifier::answer`, which finds
# the requirement, verifies the token and builds the 200), per warm request, measured by
# benches/proxies/check_cost.sh with INSIDE set, for two request shapes:
#
#   query: GET /v1/verify?tenant=acme&permission=runs:read   (a verifier without routes)
#   route: GET /v1/verify with X-Forwarded-Method: GET, X-Forwarded-Uri: /api/acme/runs/42
#          (and X-Forwarded-Proto/-Host) from 127.0.0.1 (trusted), against deploy/verifier.toml's
#          routes
#
# Instruction counts do not move with the machine's load, unlike CPU time on a shared machine.
#
# Usage: benches/proxies/route_cost.sh   (env: REQUESTS=20000 BASE_PORT=18650 SKIP_BUILD=
#                                              BIN_DIR=target/release)
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${REQUESTS:-20000}
table=$(INSIDE=edgetoken::http::verifier::answer SHAPES="query route" REQUESTS="$REQUESTS" \
    BASE_PORT="${BASE_PORT:-18650}" benches/proxies/check_cost.sh)
echo "$table"
awk -F'|' '$2 ~ /query/ {q = $3} $2 ~ /route/ {r = $3}
    END { printf "\nroute - query: %.0f instructions per request\n", r - q }' <<<"$table"
