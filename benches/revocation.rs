//! Revocation mirror lookups at 10^6 live entries (SPEC §9), against a plain `HashSet<String>`.
//!
//! The mirror answers every verify call, so its lookup must stay well under a microsecond even
//! when a million tokens are revoked. Each group measures the mirror and the baseline side by
//! side on the same ids: `hit` looks up revoked ids, `miss` ids that are not revoked (the
//! common case, which also walks the three watermark maps). Ids are unique and precomputed;
//! each iteration takes the next one, so no single entry stays hot in cache.
//!
//! Run: `cargo bench --bench revocation`
#![expect(
    clippy::expect_used,
    reason = "bench setup: a broken fixture must abort the run loudly, not measure nonsense"
)]

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_main};
use edgetoken::clock::ManualClock;
use edgetoken::keys::KeyId;
use edgetoken::revocation::{
    Mirror, Revocation, RevocationCheck, RevocationSettings, RevocationStatus, TokenFacts,
};
use edgetoken::token::{Subject, TenantId, TokenId};
use sha2::{Digest, Sha256};

const ENTRIES: usize = 1_000_000;
const NOW: i64 = 1_800_000_000;

/// A deterministic, unique, canonical 22-character jti for `i` in namespace `ns`.
fn jti(ns: u8, i: usize) -> TokenId {
    let digest = Sha256::new()
        .chain_update([ns])
        .chain_update(i.to_le_bytes())
        .finalize();
    TokenId::new(&URL_SAFE_NO_PAD.encode(&digest[..16])).expect("jti")
}

/// Who every looked-up token belongs to, and its signing key.
struct Owner {
    subject: Subject,
    tenant: TenantId,
    kid: KeyId,
}

fn facts<'a>(jti: &'a TokenId, owner: &'a Owner) -> TokenFacts<'a> {
    TokenFacts {
        jti,
        subject: &owner.subject,
        tenant: &owner.tenant,
        kid: &owner.kid,
        issued_at: NOW - 60,
        expires_at: NOW + 3600,
    }
}

fn lookups(c: &mut Criterion) {
    let mirror = Mirror::authoritative(
        &RevocationSettings::default(),
        Arc::new(ManualClock::at(NOW)),
    );
    let revoked: Vec<TokenId> = (0..ENTRIES).map(|i| jti(0, i)).collect();
    let unknown: Vec<TokenId> = (0..ENTRIES).map(|i| jti(1, i)).collect();
    let owner = Owner {
        subject: "alice".parse().expect("subject"),
        tenant: "acme".parse().expect("tenant"),
        kid: format!("{:k<43}", "k1").parse().expect("kid"),
    };
    let batch: Vec<Revocation> = revoked
        .iter()
        .map(|j| Revocation::Token {
            jti: j.clone(),
            expires_at: NOW + 3600,
        })
        .collect();
    mirror.apply_all(&batch);
    // A few watermarks, so a miss walks every map as in production.
    for i in 0..100 {
        mirror.apply(&Revocation::User {
            tenant: owner.tenant.clone(),
            subject: format!("user{i}").parse().expect("subject"),
            before: NOW,
        });
        mirror.apply(&Revocation::Tenant {
            tenant: format!("tenant{i}").parse().expect("tenant"),
            before: NOW,
        });
        mirror.apply(&Revocation::Key {
            kid: format!("kid{i:040}").parse().expect("kid"),
            before: NOW,
        });
    }
    assert_eq!(mirror.size().tokens, ENTRIES);
    let baseline: HashSet<String> = revoked.iter().map(ToString::to_string).collect();

    for (name, ids, expected) in [
        ("hit", &revoked, RevocationStatus::Revoked),
        ("miss", &unknown, RevocationStatus::NotRevoked),
    ] {
        let mut group = c.benchmark_group(format!("revocation_lookup_1e6/{name}"));
        let mut i = 0;
        group.bench_function("mirror", |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                let status = mirror.status(black_box(&facts(&ids[i], &owner)));
                debug_assert_eq!(status, expected);
                status
            });
        });
        let mut i = 0;
        group.bench_function("hashset_string", |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                baseline.contains(black_box(ids[i].as_str()))
            });
        });
        group.finish();
    }
}

/// Kept in a private module: `criterion_group!` generates an undocumented public fn.
mod entry {
    use super::lookups;
    criterion::criterion_group!(benches, lookups);
}

criterion_main!(entry::benches);
