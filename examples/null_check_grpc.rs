//! Benchmark-only: a gRPC `envoy.service.auth.v3.Authorization/Check` server that **passes
//! every request** (`OK` with the five `X-Auth-*` headers of a passing answer, whatever the
//! check carries), so it listens on loopback only. The edge-proxy benchmark
//! (`benches/proxies/run.sh`) puts it where edgetoken's gRPC listener goes behind Envoy: the
//! floor of what a gRPC check costs a tonic server, as `bare_axum`'s `/v1/verify` is over HTTP.
//!
//! Usage: `null_check_grpc LISTEN_ADDR` (a loopback address).

use std::error::Error;
use std::net::SocketAddr;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::google::rpc;

/// The headers of a passing answer, as edgetoken sets them.
const PASS: [(&str, &str); 5] = [
    ("x-auth-subject", "bench"),
    ("x-auth-tenant", "acme"),
    ("x-auth-scope", "runs:read"),
    ("x-auth-token-id", "01JZ8Q0W6Y3V7C9B2N4M5K6J7H"),
    ("x-auth-expires", "2026-12-02T09:00:00Z"),
];

struct PassEverything;

#[tonic::async_trait]
impl Authorization for PassEverything {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let headers = PASS
            .iter()
            .map(|(key, value)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: (*key).to_owned(),
                    value: (*value).to_owned(),
                    ..HeaderValue::default()
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                ..HeaderValueOption::default()
            })
            .collect();
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()), // code 0: OK
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                ..OkHttpResponse::default()
            })),
            ..CheckResponse::default()
        }))
    }
}

/// On edgetoken's own runtime (`edgetoken::runtime`, one thread per CPU this process may use
/// or `TOKIO_WORKER_THREADS`), so that the floor runs on what the verifier runs on.
fn main() -> Result<(), Box<dyn Error>> {
    let threads = edgetoken::runtime::worker_threads(None)?;
    edgetoken::runtime::build(threads)?.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn Error>> {
    let Some(listen) = std::env::args().nth(1) else {
        return Err("usage: null_check_grpc LISTEN_ADDR".into());
    };
    let listen: SocketAddr = listen.parse()?;
    if !listen.ip().is_loopback() {
        return Err(format!("{listen}: every check passes; listen on loopback").into());
    }
    // edgetoken's own logging setup (`RUST_LOG`, warn in the benches): without a subscriber,
    // `tracing`'s `log` feature (on through axum's `tower-log`) sends every span of hyper, h2
    // and tonic to `Span::log`, about 1 µs per request a floor must not pay and edgetoken does
    // not.
    edgetoken::telemetry::init();
    tonic::transport::Server::builder()
        .serve(listen, AuthorizationServer::new(PassEverything))
        .await?;
    Ok(())
}
