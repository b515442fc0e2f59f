#!/usr/bin/env python3
"""The soak run's invariant checker (issue 13; THREATS §3.6 I1-I4): judges an event log.

It reads only the log (and, when given, the run's token file and key directory) and decides
from them alone, not from what the driver expected:

  - a token is revoked from its acknowledgement on: a revoke answer 204 / 200 carrying an
    `Edgetoken-Barrier: confirmed=N` header (every live verifier applied it: bound 0), or 202
    (`lagging=L`: each lagging verifier refuses it within the body's `max_staleness_ms`: bound
    B). A 200 without the header is RFC 7009's "not a valid token" and acknowledges nothing;
    503 and transport errors acknowledge nothing.
  - I1/I2: no request *sent* after `t_ack + bound` may be accepted (status 200) by the edge or
    a verifier. Send time, not answer time: a request in flight at the acknowledgement may
    pass (THREATS §3.5 point 4), one that started after it may not.
  - an accepted request's upstream echo (`token_id=`) names the token that was sent;
  - expired (checked from the token's own `exp`), foreign-key (its `kid` is not in the run's
    key directory) and tampered tokens are never accepted;
  - I4: outside declared fault windows, at least 99.9% of requests with never-revoked valid
    tokens are accepted;
  - no 5xx and no transport error, edge or issuer, outside declared fault windows (a request
    whose [send, answer] interval overlaps a window is "inside");
  - after the run, every acknowledged revocation is refused (401) by each verifier (sweep);
  - open file descriptors of each process do not grow by more than FD_SLACK over its life;
  - the RSS of the issuer, the verifiers and nginx grows by at most RSS_GROWTH_MAX MiB a minute
    while nothing fails: summed over the fault-free stretches of each process's life (from
    RSS_SETTLE_S after a fault window, or after the process started, to the next fault).

Prints Markdown (per-minute latency, per-minute RSS / fds, faults, invariants) and exits 1 if
any invariant fails, 2 on a malformed log.

Usage: check.py EVENTS.jsonl [--tokens TOKENS.tsv]
"""

import base64
import json
import os
import sys

FD_SLACK = 100
# Memory is judged on the issuer, the verifiers and nginx while nothing fails: the RSS growth
# within fault-free stretches, summed, per minute of those stretches. A stretch starts
# RSS_SETTLE_S after a fault window ends (or after the process started: the verified-token cache
# of the soak's configuration fills in its first two minutes) and ends when the next fault
# starts. What still grows then is the revocation state, kept by design until the tokens expire
# (about 0.13 MiB a minute at 50 revocations a second). A fault itself may raise the high-water
# mark once: after a Redis restart every mirror reads the whole revocation state and writes it
# back (resync, re-seed), and the allocator keeps the peak. That step is reported per process,
# not judged. Redis holds the revocation state too and is reported, not judged; so is the driver.
RSS_GROWTH_MAX = 0.5  # MiB per minute of fault-free time
RSS_SETTLE_S = 30
RSS_FIRST_S = 120
RSS_MIN_STRETCH_S = 30
RSS_JUDGED = ("issuer", "verifier-1", "verifier-2", "nginx")
VALID_ACCEPT_MIN = 0.999


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


def rss_stretches(ss, faults, started):
    """The fault-free stretches of one process life `ss` (samples in time order): lists of
    samples from RSS_SETTLE_S after a fault window (or RSS_FIRST_S after `started`) to the next
    fault's start, each at least RSS_MIN_STRETCH_S long."""
    bounds, lo = [], started + RSS_FIRST_S
    for f in sorted(faults, key=lambda f: f["start"]):
        bounds.append((lo, f["start"]))
        lo = max(lo, f["end"] + RSS_SETTLE_S)
    bounds.append((lo, float("inf")))
    out = []
    for a, b in bounds:
        part = [s for s in ss if a <= s["t"] < b]
        if len(part) >= 2 and part[-1]["t"] - part[0]["t"] >= RSS_MIN_STRETCH_S:
            out.append(part)
    return out


def fmt_ms(seconds):
    return "—" if seconds is None else f"{seconds * 1000:.1f}"


def b64json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def load_tokens(path):
    """jti -> (kind, exp, kid) from the run's token file; kind is the file's label."""
    out = {}
    if not path or not os.path.exists(path):
        return out, set()
    with open(path) as f:
        for line in f:
            kind, jti, token = line.rstrip("\n").split("\t")
            head, body, _ = token.split(".")
            claims = b64json(body)
            out.setdefault(jti, (kind, claims["exp"], b64json(head).get("kid")))
            if kind == "tampered":
                out[jti] = (kind, claims["exp"], b64json(head).get("kid"))
    keys_dir = os.path.join(os.path.dirname(path), "keys")
    trusted = set()
    if os.path.isdir(keys_dir):
        trusted = {n[: -len(".jwk.json")] for n in os.listdir(keys_dir) if n.endswith(".jwk.json")}
    return out, trusted


def main(argv):
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    events_path = argv[0]
    tokens_path = argv[argv.index("--tokens") + 1] if "--tokens" in argv else None
    config, load, faults, revokes, reqs, samples, sweep = {}, {}, [], [], [], [], None
    with open(events_path) as f:
        for n, line in enumerate(f, 1):
            try:
                e = json.loads(line)
            except ValueError:
                print(f"{events_path}:{n}: not JSON", file=sys.stderr)
                return 2
            ev = e.get("ev")
            if ev == "req":
                reqs.append(e)
            elif ev == "revoke":
                revokes.append(e)
            elif ev == "sample":
                samples.append(e)
            elif ev == "fault":
                faults.append(e)
            elif ev == "config":
                config = e
            elif ev == "load":
                load = e
            elif ev == "sweep":
                sweep = e
    if not config or not load:
        print("the log has no config or load event: the run did not start", file=sys.stderr)
        return 2
    tokens, trusted_kids = load_tokens(tokens_path)
    # nginx's own view of each edge request (answer wall time, request time), if logged.
    access = []
    access_path = os.path.join(os.path.dirname(events_path), "access.log")
    if os.path.exists(access_path):
        with open(access_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[3].startswith("/api/"):
                    access.append((float(parts[0]) - config["wall_start"], float(parts[1])))
    wall0 = config["wall_start"]
    leeway = config.get("leeway_s", 30)
    default_bound = config["max_staleness_ms"] / 1000
    windows = [(f["start"], f["end"]) for f in faults]

    def inside(t0, t1):
        return any(t0 <= end and t1 >= start for start, end in windows)

    # Acknowledgements: the earliest per token.
    acks = {}
    revoke_5xx_out, revoke_5xx_in, lagging_acks, noop = 0, 0, 0, 0
    for r in revokes:
        s, barrier = r["status"], r.get("barrier")
        if s in (200, 204) and barrier and "lagging" not in barrier:
            bound = 0.0
        elif s == 202 and barrier:
            bound = (r.get("bound_ms") or config["max_staleness_ms"]) / 1000
            lagging_acks += 1
        else:
            if s == 200:
                noop += 1
            if s == 0 or s >= 500:
                if inside(r["t0"], r["t1"]):
                    revoke_5xx_in += 1
                else:
                    revoke_5xx_out += 1
            continue
        if r["tok"] not in acks or r["t1"] < acks[r["tok"]][0]:
            acks[r["tok"]] = (r["t1"], bound)

    violations, within_bound, in_flight, echo_mismatch, must_reject = [], 0, 0, [], []
    within_bound_max = 0.0
    edge_5xx_out, edge_5xx_in, edge_5xx_out_examples = 0, 0, []
    valid_total = valid_ok = 0
    sweep_bad = []
    for q in reqs:
        tok, s, t0, t1 = q["tok"], q["status"], q["t0"], q["t1"]
        kind, exp, kid = tokens.get(tok, (q.get("kind"), None, None))
        # The upstream's echo (edge) or X-Auth-Token-Id (verifier) names the token decided on.
        if s == 200 and q.get("echoed") != tok:
            echo_mismatch.append(q)
        ack = acks.get(tok)
        if ack and s == 200:
            t_ack, bound = ack
            if t0 > t_ack + bound:
                violations.append((q, t_ack, bound))
            elif t0 > t_ack:
                within_bound += 1
                within_bound_max = max(within_bound_max, t0 - t_ack)
            elif t1 > t_ack:
                in_flight += 1
        if s == 200:
            expired = exp is not None and wall0 + t0 >= exp + leeway
            foreign = kid is not None and trusted_kids and kid not in trusted_kids
            if expired or foreign or kind == "tampered" or q.get("kind") in ("expired", "foreign",
                                                                                "tampered"):
                must_reject.append(q)
        if s == 0 or s >= 500:
            if inside(t0, t1):
                edge_5xx_in += 1
            else:
                edge_5xx_out += 1
                if len(edge_5xx_out_examples) < 5:
                    edge_5xx_out_examples.append(q)
        if kind == "valid" and tok not in acks and q["src"] == "load" and not inside(t0, t1):
            valid_total += 1
            valid_ok += s == 200
        if q["src"] == "sweep" and (s != 401 or q.get("reason") != "revoked"):
            sweep_bad.append(q)

    swept = {q["tok"] for q in reqs if q["src"] == "sweep"}
    unswept = [t for t in acks if t not in swept]

    # Per minute, from the start of the load.
    start, end = load["start"], load["end"]
    minutes = max(1, int((end - start + 59.999) // 60))
    rows = []
    for m in range(minutes):
        lo, hi = start + 60 * m, min(end, start + 60 * (m + 1))
        edge = [q for q in reqs if q["via"] == "edge" and q["src"] in ("load", "probe")
                and lo <= q["t0"] < hi]
        lat = [q["t1"] - q["t0"] for q in edge]
        lag = [q["t0"] - q["due"] for q in edge if q.get("due") is not None]
        fives = [q for q in edge if q["status"] == 0 or q["status"] >= 500]
        rv = [r for r in revokes if lo <= r["t0"] < hi]
        rv_ack = [r for r in rv if r["tok"] in acks and acks[r["tok"]][0] == r["t1"]]
        rv_lat = [r["t1"] - r["t0"] for r in rv_ack]
        rv_202 = sum(1 for r in rv_ack if r["status"] == 202)
        rv_fail = sum(1 for r in rv if r["status"] == 0 or r["status"] >= 500)
        fault_names = [f["kind"] for f in faults if lo <= f["start"] < hi]
        server = [rt for t, rt in access if lo <= t < hi]
        rows.append((m + 1, len(edge), len(edge) / max(1e-9, hi - lo), pct(lat, 50), pct(lat, 99),
                     max(lat) if lat else None, pct(lag, 99), len(fives),
                     sum(1 for q in fives if not inside(q["t0"], q["t1"])), len(rv_ack), rv_202,
                     rv_fail, pct(rv_lat, 50), pct(rv_lat, 99), ", ".join(fault_names),
                     pct(server, 99), max(server) if server else None))

    out = []
    out.append(f"Run: {config['duration_s']:.0f} s, target {config['rate']:.0f} edge req/s + "
               f"{config['revoke_rate']:.0f} revocations/s; heartbeat {config['heartbeat_ms']} ms, "
               f"max_staleness {config['max_staleness_ms']} ms, barrier_timeout "
               f"{config['barrier_timeout_ms']} ms, on_stale {config['on_stale']}, Redis AOF "
               f"appendfsync {config['redis_appendfsync']}.\n")
    out.append("### Per minute (edge = through nginx; latency from send to answer)\n")
    out.append("| min | edge req | req/s | p50 ms | p99 ms | max ms | nginx p99 / max ms | sched. "
               "lag p99 ms | 5xx / err (outside windows) | revokes acked | of which 202 | revoke "
               "5xx / err | revoke p50 ms | revoke p99 ms | faults started |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        out.append(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {fmt_ms(r[3])} | {fmt_ms(r[4])} | "
                   f"{fmt_ms(r[5])} | {fmt_ms(r[15])} / {fmt_ms(r[16])} | {fmt_ms(r[6])} | "
                   f"{r[7]} ({r[8]}) | {r[9]} | {r[10]} | {r[11]} | {fmt_ms(r[12])} | "
                   f"{fmt_ms(r[13])} | {r[14]} |")

    # Processes: max RSS and fds per minute; a pid change is a restart.
    names = sorted({s["name"] for s in samples}, key=lambda n: (n == "driver", n))
    out.append("\n### Processes per minute: max RSS MiB / max open fds (* = restarted in that "
               "minute)\n")
    out.append("| min | " + " | ".join(names) + " |")
    out.append("|---:|" + "---:|" * len(names))
    fd_failures, memory_lines, rss_failures, rss_judged = [], [], [], 0
    for m in range(minutes):
        lo, hi = start + 60 * m, start + 60 * (m + 1)
        cells = []
        for name in names:
            ss = [s for s in samples if s["name"] == name and lo <= s["t"] < hi]
            if not ss:
                cells.append("—")
                continue
            mark = "*" if len({s["pid"] for s in ss}) > 1 else ""
            cells.append(f"{max(s['rss_kb'] for s in ss) / 1024:.1f} / "
                         f"{max(s['fds'] for s in ss)}{mark}")
        out.append(f"| {m + 1} | " + " | ".join(cells) + " |")
    for name in names:
        by_pid = {}
        for s in samples:
            if s["name"] == name:
                by_pid.setdefault(s["pid"], []).append(s)
        for pid, ss in by_pid.items():
            first, last = ss[0], ss[-1]
            life = last["t"] - first["t"]
            if last["fds"] - first["fds"] > FD_SLACK:
                fd_failures.append(f"{name} (pid {pid}): {first['fds']} -> {last['fds']} fds")
            if life >= 120:
                # RSS after the first minute of this process's life against its last sample.
                base = next((s for s in ss if s["t"] - first["t"] >= 60), first)
                grow = (last["rss_kb"] - base["rss_kb"]) / 1024
                quiet, steps = "—", "—"
                stretches = rss_stretches(ss, faults, first["t"])
                if stretches:
                    grown = sum(p[-1]["rss_kb"] - p[0]["rss_kb"] for p in stretches) / 1024
                    minutes = sum(p[-1]["t"] - p[0]["t"] for p in stretches) / 60
                    rate = grown / minutes
                    quiet = f"{rate:+.2f} ({minutes:.1f} min)"
                    # What changed between consecutive stretches: across the faults between.
                    jumps = [(b[0]["rss_kb"] - a[-1]["rss_kb"]) / 1024
                             for a, b in zip(stretches, stretches[1:])]
                    steps = " ".join(f"{j:+.1f}" for j in jumps) or "—"
                    if name in RSS_JUDGED:
                        rss_judged += 1
                        if rate > RSS_GROWTH_MAX:
                            rss_failures.append(f"{name} (pid {pid}): {rate:+.2f} MiB/min over "
                                                f"{minutes:.1f} fault-free minutes")
                memory_lines.append(
                    f"| {name} | {pid} | {life / 60:.1f} | {base['rss_kb'] / 1024:.1f} | "
                    f"{last['rss_kb'] / 1024:.1f} | {grow:+.1f} | {quiet} | {steps} | "
                    f"{first['fds']} → {last['fds']} |")
    if memory_lines:
        out.append("\n### Memory and descriptors per process lifetime (RSS one minute into its "
                   "life against its last sample)\n")
        out.append("| process | pid | lived min | RSS at 1 min MiB | RSS at end MiB | change MiB | "
                   "growth while nothing fails, MiB/min (over) | steps across faults, MiB | "
                   "fds first → last |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
        out.extend(memory_lines)

    if faults:
        out.append("\n### Declared fault windows\n")
        out.append("| fault | detail | start s | injected s | ready again after s | window end s |")
        out.append("|---|---|---:|---:|---:|---:|")
        for f in faults:
            detail = {k: v for k, v in f.items() if k not in ("ev", "kind", "start", "injected",
                                                              "recovered", "end", "grace_s")}
            rec = "never" if f["recovered"] is None else f"{f['recovered'] - f['start']:.1f}"
            out.append(f"| {f['kind']} | {', '.join(f'{k}={v}' for k, v in detail.items())} | "
                       f"{f['start'] - start:.1f} | {f['injected'] - start:.1f} | {rec} | "
                       f"{f['end'] - start:.1f} |")

    edge_total = sum(1 for q in reqs if q["via"] == "edge")
    probes = sum(1 for q in reqs if q["src"] == "probe")
    checks = [
        ("revoked tokens accepted after t_ack + bound (I1/I2; bound 0 for confirmed, "
         "max_staleness_ms for 202)", len(violations), len(violations) == 0),
        ("accepted responses naming another token than the one sent", len(echo_mismatch),
         not echo_mismatch),
        ("expired / foreign-key / tampered tokens accepted", len(must_reject), not must_reject),
        ("edge and verifier 5xx or transport errors outside declared windows", edge_5xx_out,
         edge_5xx_out == 0),
        ("issuer revoke 5xx or transport errors outside declared windows", revoke_5xx_out,
         revoke_5xx_out == 0),
        (f"valid tokens accepted outside windows (I4, >= {VALID_ACCEPT_MIN:.1%})",
         f"{valid_ok}/{valid_total}" + (f" = {valid_ok / valid_total:.4%}" if valid_total else ""),
         valid_total > 0 and valid_ok / valid_total >= VALID_ACCEPT_MIN),
        ("final sweep: acknowledged revocations not refused `revoked` by a verifier",
         f"{len(sweep_bad)} (+{len(unswept)} not swept)", not sweep_bad and not unswept and
         sweep is not None),
        (f"processes whose open fds grew by more than {FD_SLACK}", len(fd_failures),
         not fd_failures),
        (f"issuer, verifier and nginx lives whose RSS grew more than {RSS_GROWTH_MAX} MiB/min "
         f"while nothing failed", f"{len(rss_failures)} of {rss_judged}", not rss_failures),
    ]
    info = [
        ("edge requests (load, probes, sweep excluded)", edge_total),
        ("revocations acknowledged", len(acks)),
        ("  of which 202 (lagging verifiers; bound = max_staleness_ms)", lagging_acks),
        ("revoke answers 200 without barrier header (token already invalid: no ack)", noop),
        ("probes right after an acknowledgement (edge + each verifier)", probes),
        ("revoked tokens accepted after a 202 ack, within its bound", within_bound),
        ("  latest such acceptance after its ack, s", f"{within_bound_max:.3f}"),
        ("revoked tokens accepted by a request in flight at its ack", in_flight),
        ("edge and verifier 5xx / transport errors inside declared windows", edge_5xx_in),
        ("issuer revoke 5xx / transport errors inside declared windows", revoke_5xx_in),
        ("sweep: revoked tokens asked of each verifier after the run",
         sweep["tokens"] if sweep else "no sweep"),
    ]
    out.append("\n### Invariants\n")
    out.append("| invariant | observed | verdict |")
    out.append("|---|---:|---|")
    for name, observed, ok in checks:
        out.append(f"| {name} | {observed} | {'pass' if ok else '**FAIL**'} |")
    out.append("\n| counts | |\n|---|---:|")
    for name, value in info:
        out.append(f"| {name} | {value} |")
    for q, t_ack, bound in violations[:10]:
        out.append(f"\nVIOLATION: token {q['tok']} accepted via {q['via']} ({q['src']}), sent "
                   f"{q['t0'] - t_ack:.6f} s after its ack (bound {bound:.3f} s)")
    for q in echo_mismatch[:5] + must_reject[:5] + edge_5xx_out_examples + sweep_bad[:5]:
        out.append(f"\nOFFENDING: {json.dumps(q)}")
    for line in fd_failures:
        out.append(f"\nFD GROWTH: {line}")
    for line in rss_failures:
        out.append(f"\nRSS GROWTH: {line}")
    failed = [name for name, _, ok in checks if not ok]
    out.append("\n" + ("FAIL: " + "; ".join(failed) if failed else "PASS: every invariant holds"))
    print("\n".join(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
