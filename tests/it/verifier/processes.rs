//! Several real processes on one Redis (SPEC §3, §5, §9): one issuer and three verifiers,
//! each the built `edgetoken` binary with its own config file and port; the verifiers take
//! their keys from the issuer's JWKS URL. A token revoked at the issuer is refused by all
//! three, and the delay from the revoke call's response to each refusal is measured.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::deployment::{Deployment, mint_via_api, revoke_via_api};
use crate::support::eventually::eventually;
use crate::support::process::EdgetokenProcess;

const REQUIREMENT: &str = "/v1/verify?tenant=acme&permission=runs:read";

async fn status(client: &reqwest::Client, url: &str, token: &str) -> StatusCode {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("verify request")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_at_the_issuer_reaches_three_verifier_processes() {
    let deployment = Deployment::new();
    let issuer = EdgetokenProcess::start(&deployment.config_text(""), "issuer").await;
    let verifier_config = deployment.config_text(&format!(
        "[verifier]\njwks_url = \"{}\"\njwks_min_refetch_secs = 1\n",
        issuer.url("/.well-known/jwks.json")
    ));
    let verifiers = futures_util::future::join_all(
        (0..3).map(|_| EdgetokenProcess::start(&verifier_config, "verifier")),
    )
    .await;

    let client = reqwest::Client::new();
    let (id, token) = mint_via_api(&issuer.url(""), &["runs:read"]).await;
    for verifier in &verifiers {
        assert_eq!(
            status(&client, &verifier.url(REQUIREMENT), &token).await,
            StatusCode::OK
        );
    }

    revoke_via_api(&issuer.url(""), &id).await;
    let acknowledged = Instant::now();
    let delays = futures_util::future::join_all(verifiers.iter().map(|verifier| {
        let (client, url, token) = (client.clone(), verifier.url(REQUIREMENT), token.clone());
        async move {
            let mut polls = 0_u32;
            // Polled back to back: the delay measured is the propagation's, not a sleep's.
            let refused = eventually(
                format!("{url} to refuse the revoked token"),
                Duration::from_secs(5),
            )
            .every(Duration::ZERO)
            .try_until(async || {
                polls += 1;
                match status(&client, &url, &token).await {
                    StatusCode::UNAUTHORIZED => Some(acknowledged.elapsed()),
                    StatusCode::OK => None,
                    other => panic!("{url}: {other} {polls} polls after the revoke"),
                }
            })
            .await;
            match refused {
                Ok(delay) => (delay, polls),
                Err(timed_out) => panic!("{timed_out}: still 200 {polls} polls after the revoke"),
            }
        }
    }))
    .await;
    for (n, (delay, polls)) in delays.iter().enumerate() {
        eprintln!(
            "revocation propagation to verifier process {n}: {:.3} ms ({polls} polls; 1 = refused on the first request)",
            delay.as_secs_f64() * 1000.0
        );
    }
}
