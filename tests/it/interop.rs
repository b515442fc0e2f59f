//! Interoperability with an independent JOSE implementation (PyJWT with `cryptography`), both
//! ways, through the CLI a user runs (SPEC §1: "any standard JOSE library must be able to
//! verify it with the published JWKS").
//!
//! PyJWT is installed by `.ci/run`; a machine without it fails these tests with a message
//! saying how to install it, it never skips them.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::process::run_cli;

/// Runs `python3 -c SCRIPT ARGS...` and returns its stdout, failing loudly on any error.
fn python(script: &str, args: &[&str]) -> String {
    let check = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .expect("python3 is needed for the interoperability tests");
    assert!(
        check.status.success(),
        "PyJWT with cryptography is needed: `python3 -m pip install 'pyjwt[crypto]>=2.12'` \
         (.ci/run installs it)\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    run_cli(dir, args, "")
}

fn stdout_of(dir: &Path, args: &[&str]) -> String {
    let output = run(dir, args);
    assert!(
        output.status.success(),
        "edgetoken {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

const VERIFY_WITH_PYJWT: &str = r#"
import json, sys, jwt
token, jwks = sys.argv[1], json.loads(sys.argv[2])
header = jwt.get_unverified_header(token)
key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
claims = jwt.decode(
    token, key, algorithms=["EdDSA"], audience="edgetoken", issuer="http://127.0.0.1:8080",
    options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
)
print(json.dumps({"header": header, "claims": claims}))
"#;

#[test]
fn pyjwt_verifies_a_token_from_edgetoken_mint_with_the_printed_jwks() {
    let dir = tempfile::tempdir().unwrap();
    stdout_of(dir.path(), &["keygen"]);
    let token = stdout_of(
        dir.path(),
        &[
            "mint",
            "--tenant",
            "acme",
            "--subject",
            "alice",
            "-p",
            "runs:write",
            "--duration",
            "8h",
        ],
    );
    let jwks = stdout_of(dir.path(), &["keys", "jwks"]);
    let out = python(VERIFY_WITH_PYJWT, &[token.trim(), &jwks]);
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen["header"]["alg"], "EdDSA");
    assert_eq!(seen["header"]["typ"], "at+jwt");
    assert_eq!(seen["claims"]["sub"], "alice");
    assert_eq!(seen["claims"]["tenant"], "acme");
    assert_eq!(seen["claims"]["scope"], "runs:write");
    let lifetime =
        seen["claims"]["exp"].as_i64().unwrap() - seen["claims"]["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 8 * 3600);
}

#[test]
fn pyjwt_refuses_an_edgetoken_token_whose_payload_was_changed() {
    let dir = tempfile::tempdir().unwrap();
    stdout_of(dir.path(), &["keygen"]);
    let token = stdout_of(
        dir.path(),
        &[
            "mint",
            "--tenant",
            "acme",
            "--subject",
            "alice",
            "-p",
            "runs:read",
        ],
    );
    let jwks = stdout_of(dir.path(), &["keys", "jwks"]);
    // Control for the test above: the same script must fail on a forged token.
    let script = format!(
        "import sys\ntry:\n{}\nexcept Exception as e:\n    print('refused', type(e).__name__)\n",
        VERIFY_WITH_PYJWT
            .lines()
            .map(|line| format!("    {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut parts: Vec<String> = token.trim().split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    let out = python(&script, &[&parts.join("."), &jwks]);
    assert!(out.starts_with("refused"), "{out}");
}

const SIGN_WITH_PYJWT: &str = r#"
import sys, time, secrets, jwt
pem, kid = open(sys.argv[1]).read(), sys.argv[2]
now = int(time.time())
claims = {
    "iss": "http://127.0.0.1:8080", "aud": "edgetoken", "sub": "bob", "tenant": "globex",
    "scope": "policies:read", "iat": now, "nbf": now, "exp": now + 3600,
    "jti": secrets.token_urlsafe(16),
}
print(jwt.encode(claims, pem, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}))
"#;

#[test]
fn edgetoken_verifies_a_token_pyjwt_signed_with_an_edgetoken_key() {
    let dir = tempfile::tempdir().unwrap();
    let kid = stdout_of(dir.path(), &["keygen"]);
    let kid = kid.split_whitespace().next().unwrap();
    let pem = dir.path().join("keys").join(format!("{kid}.key.pem"));
    let token = python(SIGN_WITH_PYJWT, &[pem.to_str().unwrap(), kid]);

    let verified = stdout_of(
        dir.path(),
        &[
            "verify",
            token.trim(),
            "--tenant",
            "globex",
            "--permission",
            "policies:read",
        ],
    );
    let claims: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["kid"], kid);

    // The same token is still refused where the requirement is not met (exit 1, a reason).
    let refused = run(dir.path(), &["verify", token.trim(), "--tenant", "acme"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wrong_tenant"));
}

#[test]
fn edgetoken_refuses_a_pyjwt_token_with_the_default_jwt_type() {
    let dir = tempfile::tempdir().unwrap();
    let kid = stdout_of(dir.path(), &["keygen"]);
    let kid = kid.split_whitespace().next().unwrap();
    let pem = dir.path().join("keys").join(format!("{kid}.key.pem"));
    // typ "JWT" instead of "at+jwt": an ID token or another kind of JWT (RFC 8725 §3.11).
    let script = SIGN_WITH_PYJWT.replace(r#""typ": "at+jwt""#, r#""typ": "JWT""#);
    let token = python(&script, &[pem.to_str().unwrap(), kid]);
    let refused = run(dir.path(), &["verify", token.trim()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("malformed"));
}
