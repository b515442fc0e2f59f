//! A JWKS endpoint whose answer the test controls (status and body), on a real loopback
//! socket: the issuer's published key set, or the faults a verifier must survive.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use edgetoken::keys::KeyRing;

/// What the endpoint answers now.
type Answer = Arc<Mutex<(StatusCode, Vec<u8>)>>;

/// The server; stops on drop.
#[derive(Debug)]
pub(crate) struct JwksServer {
    answer: Answer,
    pub(crate) url: String,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `ring`'s JWKS at `/.well-known/jwks.json`.
    pub(crate) async fn start(ring: &KeyRing) -> Self {
        let answer: Answer = Arc::new(Mutex::new((StatusCode::OK, Vec::new())));
        let shared = Arc::clone(&answer);
        let router = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let shared = Arc::clone(&shared);
                async move {
                    let (status, body) = shared.lock().unwrap().clone();
                    (status, [("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let server = Self { answer, url, task };
        server.publish(ring);
        server
    }

    /// Serves `ring`'s JWKS from now on.
    pub(crate) fn publish(&self, ring: &KeyRing) {
        self.answer(StatusCode::OK, serde_json::to_vec(&ring.jwks()).unwrap());
    }

    /// Serves `status` with `body` from now on.
    pub(crate) fn answer(&self, status: StatusCode, body: impl Into<Vec<u8>>) {
        *self.answer.lock().unwrap() = (status, body.into());
    }

    /// Stops answering at all (connections are refused).
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
