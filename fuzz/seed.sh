#!/usr/bin/env bash
# Builds the seed corpora fuzz/corpus/<target>/ (generated, not committed; see docs/fuzzing.md):
#   1. the hand-written seeds committed in fuzz/seeds/<target>/;
#   2. tokens minted with the targets' fixed keys and clock, and the test catalogue's header
#      and claim cases re-signed (the `seed` binary, src/seed.rs);
#   3. the golden token and key (tests/data/golden), the deploy/ and README configurations;
#   4. the public vectors, read in place from ../shared/vectors beside the repository (never
#      copied into it): RFC 8037/8032, Wycheproof (EdDSA keys, JWS structure and base64
#      cases), CCTV and speccheck (small-order and non-canonical keys and signatures).
# Without the vectors it says so and goes on, except under CI=true, where it fails (STYLE.md).
# Existing corpus files are kept: the fuzzer's own finds accumulate across runs.
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd .. && pwd)
vectors=${EDGETOKEN_VECTORS:-$repo/../shared/vectors}
corpus=corpus

mkdir -p "$corpus"
for dir in seeds/*/; do
    target=$(basename "$dir")
    mkdir -p "$corpus/$target"
    cp -- "$dir"* "$corpus/$target/"
done

# Built with the targets' flags (FUZZ_BUILD_FLAGS, as run.sh), so it adds no second build.
read -ra build_flags <<<"${FUZZ_BUILD_FLAGS:-}"
bin=target/x86_64-unknown-linux-gnu/release
[[ " ${build_flags[*]} " == *" --dev "* ]] && bin=target/x86_64-unknown-linux-gnu/debug
cargo +nightly fuzz build "${build_flags[@]}" seed
# Leaks at the seed writer's exit are not findings.
ASAN_OPTIONS=detect_leaks=0 "$bin/seed" "$corpus"

cp "$repo/tests/data/golden/token.jwt" "$corpus/verify_token/golden-token.jwt"
python3 - "$repo" "$corpus" <<'PY'
import json, pathlib, re, sys
repo, corpus = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
golden = json.loads((repo / "tests/data/golden/key.jwk.json").read_text())
(corpus / "jwks/golden.json").write_text(json.dumps({"keys": [golden]}))
for path in sorted((repo / "deploy").glob("*.toml")):
    (corpus / "settings_toml" / f"deploy-{path.name}").write_bytes(path.read_bytes())
blocks = re.findall(r"```toml\n(.*?)```", (repo / "README.md").read_text(), re.S)
for i, block in enumerate(blocks):
    (corpus / "settings_toml" / f"readme-{i}.toml").write_text(block)
PY

if [[ ! -d "$vectors" ]]; then
    if [[ "${CI:-}" == true ]]; then
        echo "FAIL: test vectors not found at $vectors" >&2
        exit 1
    fi
    echo "seed: no test vectors at $vectors; skipping the vector seeds" >&2
else
    python3 - "$vectors" "$corpus" <<'PY'
import base64, json, pathlib, sys
vectors, corpus = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
def put(target, name, text):
    (corpus / target / name).write_text(text)
def jwks(*xs, **extra):
    return json.dumps({"keys": [dict({"kty": "OKP", "crv": "Ed25519", "x": x}, **extra) for x in xs]})
golden = (corpus / "verify_token/golden-token.jwt").read_text().strip()
signing_input = golden.rsplit(".", 1)[0]

rfc8037 = json.loads((vectors / "rfc/rfc8037_appendix_a.json").read_text())
put("verify_token", "rfc8037-a4.jws", rfc8037["A.4_ed25519_signing"]["compact_jws"])
put("jwks", "rfc8037-a2.json", json.dumps({"keys": [rfc8037["A.2_ed25519_public_key_jwk"]]}))
put("jwks", "rfc8037-a1-private.json", json.dumps({"keys": [rfc8037["A.1_ed25519_private_key_jwk"]]}))
for n, test in enumerate(json.loads((vectors / "rfc/rfc8032_section7_1_ed25519.json").read_text()).get("tests", [])):
    pk = test.get("public_key") or test.get("pk")
    if pk:
        put("jwks", f"rfc8032-{n}.json", jwks(b64(bytes.fromhex(pk))))

jws = json.loads((vectors / "wycheproof/json_web_signature_test.json").read_text())
for group in jws["testGroups"]:
    for test in group["tests"]:
        if isinstance(test.get("jws"), str):
            put("verify_token", f"wycheproof-jws-{test['tcId']}", test["jws"])
            put("bearer_header", f"wycheproof-jws-{test['tcId']}", "Bearer " + test["jws"])
eddsa = json.loads((vectors / "wycheproof/ed25519_test.json").read_text())
for n, group in enumerate(eddsa["testGroups"]):
    put("jwks", f"wycheproof-eddsa-{n}.json", json.dumps({"keys": [group["publicKeyJwk"]]}))
    for test in group["tests"][:3]:
        put("verify_token", f"wycheproof-eddsa-sig-{test['tcId']}",
            f"{signing_input}.{b64(bytes.fromhex(test['sig']))}")

# CCTV: one seed per distinct set of flags, as a key (JWKS) and a signature grafted onto the
# golden token (it cannot verify there, but reaches the signature decoding and checks).
seen = set()
for vector in json.loads((vectors / "cctv/ed25519vectors.json").read_text()):
    flags = tuple(sorted(vector.get("flags") or []))
    if flags in seen:
        continue
    seen.add(flags)
    n = vector["number"]
    put("jwks", f"cctv-{n}.json", jwks(b64(bytes.fromhex(vector["key"]))))
    put("verify_token", f"cctv-{n}", f"{signing_input}.{b64(bytes.fromhex(vector['sig']))}")
for n, case in enumerate(json.loads((vectors / "speccheck/cases.json").read_text())):
    put("jwks", f"speccheck-{n}.json", jwks(b64(bytes.fromhex(case["pub_key"]))))
    put("verify_token", f"speccheck-{n}", f"{signing_input}.{b64(bytes.fromhex(case['signature']))}")
PY
fi

for dir in "$corpus"/*/; do
    printf 'seed: %-16s %4d files\n' "$(basename "$dir")" "$(find "$dir" -type f | wc -l)"
done
