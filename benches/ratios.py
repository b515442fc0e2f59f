#!/usr/bin/env python3
"""Print the SPEC §9 verify ratios from criterion's output as a markdown table.

Run after `cargo bench --bench verify` (python3 standard library only):

    python3 benches/ratios.py [CRITERION_DIR]

CRITERION_DIR defaults to `target/criterion` next to this script's crate. Every ratio
divides two medians measured in the same criterion group, so in the same run: on a shared,
noisy machine only same-run ratios mean anything.
"""

import json
import sys
from pathlib import Path

# (group, id, what it measures)
ROWS = [
    ("cold_vs_verify_strict", "bare_verify_strict", "ed25519-dalek `verify_strict`, one token"),
    ("cold_vs_verify_strict", "bare_verify_strict_pool", "ed25519-dalek `verify_strict`, pool"),
    ("cold_vs_verify_strict", "cold_verify", "cold `Verifier::verify`, cache on"),
    ("cold_vs_verify_strict", "cold_no_cache", "cold `Verifier::verify`, cache off"),
    ("cold_vs_verify_strict", "jsonwebtoken_decode", "jsonwebtoken 11 `decode` (reference)"),
    ("warm_vs_cold", "warm_verify", "warm `Verifier::verify` (cache hit)"),
    ("warm_vs_cold", "cold_verify", "cold `Verifier::verify`"),
    ("reject_vs_cold", "reject_garbage", "reject 450 B of random base64url"),
    ("reject_vs_cold", "reject_oversized", "reject 9 KiB token"),
    ("reject_vs_cold", "reject_bad_header", "reject `alg: none` header"),
    ("reject_vs_cold", "cold_verify", "cold `Verifier::verify`"),
    ("mint_vs_sign", "bare_sign", "ed25519-dalek sign alone"),
    ("mint_vs_sign", "mint", "`Issuer::mint`"),
]

# (label, group, numerator id, denominator id, target or None)
RATIOS = [
    ("cold / bare", "cold_vs_verify_strict", "cold_verify", "bare_verify_strict", 1.10),
    ("cold / bare (pool)", "cold_vs_verify_strict", "cold_verify", "bare_verify_strict_pool", 1.10),
    ("cold (no cache) / bare", "cold_vs_verify_strict", "cold_no_cache", "bare_verify_strict", 1.10),
    ("jsonwebtoken / bare", "cold_vs_verify_strict", "jsonwebtoken_decode", "bare_verify_strict", None),
    ("warm / cold", "warm_vs_cold", "warm_verify", "cold_verify", 0.02),
    ("reject garbage / cold", "reject_vs_cold", "reject_garbage", "cold_verify", 0.01),
    ("reject oversized / cold", "reject_vs_cold", "reject_oversized", "cold_verify", 0.01),
    ("reject bad header / cold", "reject_vs_cold", "reject_bad_header", "cold_verify", 0.01),
    ("mint / bare sign", "mint_vs_sign", "mint", "bare_sign", None),
]


def median_ns(root, group, bench_id):
    """The median point estimate in nanoseconds, or None when the bench did not run."""
    path = root / group / bench_id / "new" / "estimates.json"
    try:
        with path.open(encoding="utf-8") as f:
            return float(json.load(f)["median"]["point_estimate"])
    except FileNotFoundError:
        return None


def human(ns):
    if ns is None:
        return "n/a"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.1f} ns"


def main():
    default = Path(__file__).resolve().parent.parent / "target" / "criterion"
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    if not root.is_dir():
        sys.exit(f"{root} not found: run `cargo bench --bench verify` first")

    print("| group | bench | measures | median |")
    print("|---|---|---|---:|")
    for group, bench_id, what in ROWS:
        print(f"| {group} | {bench_id} | {what} | {human(median_ns(root, group, bench_id))} |")

    print()
    print("| ratio (medians, same group) | value | target | met |")
    print("|---|---:|---:|:---:|")
    for label, group, num, den, target in RATIOS:
        a, b = median_ns(root, group, num), median_ns(root, group, den)
        if a is None or b is None or b == 0:
            print(f"| {label} | n/a | {target or '-'} | |")
            continue
        value = a / b
        shown = f"{value:.4f}" if value < 0.1 else f"{value:.3f}"
        if target is None:
            print(f"| {label} | {shown} | - | |")
        else:
            met = "yes" if value <= target else "**no**"
            print(f"| {label} | {shown} | ≤ {target} | {met} |")


if __name__ == "__main__":
    main()
