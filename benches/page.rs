//! The tokens page's budgets (issue 9): the list page with 200 tokens renders server-side in
//! under 20 ms, and the whole page (HTML, stylesheet, script, icon) weighs under 100 KB
//! uncompressed.
//!
//! `render_list_200` measures the render of the list page (create form, tenant selector and
//! 200 rows, each with its permissions label, times and status) from token metadata, which is
//! the page's own work per request; the record read it follows is the API's. The weights are
//! printed once before timing and asserted, so `cargo bench --bench page -- --test` fails when
//! a budget is broken.
//!
//! Run: `cargo bench --bench page`
#![expect(
    clippy::expect_used,
    clippy::print_stdout,
    reason = "bench setup: a broken fixture must abort loudly; the weights are the bench's output"
)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_main};
use edgetoken::directory::{Membership, User};
use edgetoken::http::page::{asset_sizes, render_list_for_bench};
use edgetoken::permissions::{Catalogue, Category, Scope};
use edgetoken::token::{Subject, TenantId};
use time::OffsetDateTime;

/// The list page budget.
const RENDER_BUDGET_MS: f64 = 20.0;
/// The page weight budget, in bytes.
const WEIGHT_BUDGET: usize = 100 * 1024;

type Row = (
    String,
    Option<String>,
    Vec<String>,
    OffsetDateTime,
    OffsetDateTime,
);

struct Fixture {
    catalogue: Catalogue,
    user: User,
    tenant: TenantId,
    now: OffsetDateTime,
}

fn fixture() -> Fixture {
    let catalogue = Catalogue::new(
        ["runs", "policies", "detections", "members"]
            .iter()
            .map(|c| Category::new(c).expect("category")),
    )
    .expect("catalogue");
    let tenant = TenantId::new("acme").expect("tenant");
    let mut tenants = BTreeMap::new();
    for slug in ["acme", "globex", "initech"] {
        tenants.insert(
            TenantId::new(slug).expect("tenant"),
            Membership {
                permissions: Scope::from_permissions(catalogue.all_permissions()),
                admin: false,
            },
        );
    }
    let user = User::new(Subject::new("alice").expect("user"), None, tenants);
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
    Fixture {
        catalogue,
        user,
        tenant,
        now,
    }
}

/// `n` tokens with unique ids, realistic names and a mix of permission sets and statuses.
fn rows(n: usize, now: OffsetDateTime) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let permissions: Vec<String> = match i % 3 {
                0 => vec![
                    "detections:read",
                    "members:read",
                    "policies:read",
                    "runs:read",
                ],
                1 => vec!["policies:read", "runs:write"],
                _ => vec![
                    "detections:write",
                    "members:write",
                    "policies:write",
                    "runs:write",
                ],
            }
            .into_iter()
            .map(str::to_owned)
            .collect();
            let created = now - time::Duration::minutes(i64::try_from(i).expect("small") * 7);
            (
                format!("tok{i:019}"),
                (i % 4 != 0).then(|| format!("ci deploy job {i}")),
                permissions,
                created,
                created + time::Duration::hours(8),
            )
        })
        .collect()
}

fn render(f: &Fixture, tokens: &[Row]) -> String {
    render_list_for_bench(&f.catalogue, &f.user, &f.tenant, tokens, f.now).expect("render")
}

fn budgets(c: &mut Criterion) {
    let f = fixture();
    let two_hundred = rows(200, f.now);
    let few = rows(5, f.now);
    let assets: usize = asset_sizes().iter().map(|(_, size)| size).sum();
    let (page_200, page_few) = (render(&f, &two_hundred), render(&f, &few));
    let started = Instant::now();
    let rounds = 50u32;
    for _ in 0..rounds {
        black_box(render(&f, black_box(&two_hundred)));
    }
    let per_render_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    println!(
        "page weight: list with 5 tokens {} B + assets {} B = {} B; with 200 tokens {} B + \
         assets = {} B (budget {} B); assets: {:?}; render of 200 rows ~{:.3} ms (budget {} ms)",
        page_few.len(),
        assets,
        page_few.len() + assets,
        page_200.len(),
        page_200.len() + assets,
        WEIGHT_BUDGET,
        asset_sizes(),
        per_render_ms,
        RENDER_BUDGET_MS,
    );
    assert!(
        page_few.len() + assets < WEIGHT_BUDGET,
        "page weight over budget"
    );
    assert!(
        page_200.len() + assets < WEIGHT_BUDGET,
        "page weight with 200 tokens over budget"
    );
    assert!(per_render_ms < RENDER_BUDGET_MS, "render over budget");

    let mut group = c.benchmark_group("page");
    group.bench_function("render_list_200", |b| {
        b.iter(|| render(&f, black_box(&two_hundred)));
    });
    group.finish();
}

/// Kept in a private module: `criterion_group!` generates an undocumented public fn.
mod entry {
    use super::budgets;
    criterion::criterion_group!(benches, budgets);
}

criterion_main!(entry::benches);
