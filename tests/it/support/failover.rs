//! The revoke-at-50/s driver of the failover tests (Sentinel, Cluster; issue 11, THREATS F8).
//!
//! Tokens are revoked through the issuer's `POST /v1/revoke` at 50 per second while the test's
//! fault (a `kill -9`, a `CLUSTER FAILOVER`) happens. Checked here: every answer is an
//! acknowledgement (200, or 202 with its bound) or 503, never anything else; no acknowledged
//! token is accepted at any point after its acknowledgement (202: after the bound it names);
//! after the run the verifier refuses every acknowledged token. Printed, not asserted
//! (timings depend on the machine): the time from the fault to "revokes accepted again" and
//! to "all mirrors fresh". Whether the acknowledged revocations are in the new primary is the
//! caller's check ([`Outcome::acked_jtis`]): only it knows where the primary is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;

use super::deployment::{Deployment, mint};
use super::eventually::eventually;
use super::process::{EdgetokenProcess, thread_stacks};

/// The revocation rate of the issue.
const PER_SECOND: u64 = 50;
/// Revoking before the fault, so the steady state is part of the run.
const BEFORE_FAULT: Duration = Duration::from_secs(2);
/// Revoking after revokes are accepted again, so the settled state is part of the run.
const AFTER_RECOVERY: Duration = Duration::from_secs(3);
/// The longest the failover may take before the test gives up.
const MAX_GAP: Duration = Duration::from_secs(45);
/// A mirror whose last confirmation is older than this is counted as cut off (2.5 heartbeats).
const STALE_MARK: f64 = 0.5;
/// Verification requirement: alice's tokens hold `runs:read` in acme.
pub(crate) const REQUIREMENT: &str = "/v1/verify?tenant=acme&permission=runs:read";

/// One revoke: which token, when it was sent and answered, the status, and for a 202 the
/// bound within which every verifier refuses the token anyway.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) token: usize,
    pub(crate) sent: Instant,
    pub(crate) answered: Instant,
    pub(crate) status: StatusCode,
    pub(crate) bound: Duration,
}

/// When `/readyz` was asked, and each mirror's (issuer, verifier) staleness in seconds and
/// the primary its durability was last measured on.
type Sample = (Instant, Vec<(f64, Option<String>)>);

/// A token accepted after its acknowledgement (plus bound): what must never happen.
#[derive(Debug)]
struct Violation {
    token: usize,
    after_ack: Duration,
}

/// What a run saw.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) tokens: Vec<String>,
    pub(crate) answers: Vec<Answer>,
}

impl Outcome {
    /// Index and `jti` of every acknowledged token.
    pub(crate) fn acked_jtis(&self) -> Vec<(usize, String)> {
        self.answers
            .iter()
            .filter(|a| is_ack(a.status))
            .map(|a| (a.token, jti(&self.tokens[a.token])))
            .collect()
    }

    /// The acknowledged tokens whose revocation the node behind `conn` does not hold in the
    /// token set of the deployment with `key_prefix`.
    pub(crate) fn missing_from(
        &self,
        conn: &mut redis::Connection,
        key_prefix: &str,
    ) -> Vec<usize> {
        let key = format!("{{{key_prefix}}}:tok");
        self.acked_jtis()
            .into_iter()
            .filter(|(_, jti)| {
                redis::cmd("ZSCORE")
                    .arg(&key)
                    .arg(jti)
                    .query::<Option<f64>>(conn)
                    .unwrap()
                    .is_none()
            })
            .map(|(token, _)| token)
            .collect()
    }
}

/// The `jti` of a token minted by the test (its payload is trusted test data).
pub(crate) fn jti(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("payload segment");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
            .expect("JSON claims");
    claims["jti"].as_str().expect("jti").to_owned()
}

pub(crate) async fn verify_status(client: &reqwest::Client, url: &str, token: &str) -> StatusCode {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_or(StatusCode::SERVICE_UNAVAILABLE, |r| r.status())
}

pub(crate) async fn readyz(client: &reqwest::Client, base: &str) -> serde_json::Value {
    match client.get(format!("{base}/readyz")).send().await {
        Ok(response) => response.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// Revokes `token` by presenting it to the issuer (RFC 7009).
pub(crate) async fn revoke(
    client: &reqwest::Client,
    url: &str,
    index: usize,
    token: &str,
) -> Answer {
    try_revoke(client, url, index, token)
        .await
        .expect("the issuer answers every revoke (it must not hang past its timeouts)")
}

/// As [`revoke`], with the client's error if the issuer did not answer in time.
async fn try_revoke(
    client: &reqwest::Client,
    url: &str,
    index: usize,
    token: &str,
) -> Result<Answer, reqwest::Error> {
    let sent = Instant::now();
    let response = client.post(url).form(&[("token", token)]).send().await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let bound = Duration::from_millis(body["max_staleness_ms"].as_u64().unwrap_or(0));
    Ok(Answer {
        token: index,
        sent,
        answered: Instant::now(),
        status,
        bound,
    })
}

pub(crate) fn is_ack(status: StatusCode) -> bool {
    status == StatusCode::OK || status == StatusCode::ACCEPTED
}

/// A client for the runs.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The run's parameters.
pub(crate) struct Run<'a> {
    /// Printed before each figure: `sentinel`, `cluster failover`, ...
    pub(crate) label: &'a str,
    pub(crate) deployment: &'a Deployment,
    pub(crate) issuer: &'a EdgetokenProcess,
    pub(crate) verifier: &'a EdgetokenProcess,
    /// Whether the fault must show as 503s (a `kill -9`); a coordinated switch may show none.
    pub(crate) expect_gap: bool,
    /// Prints the answers' timeline and the issuer's log.
    pub(crate) debug: bool,
    /// For a fault that takes a while (a slot migration run by another thread): when it
    /// ended, `None` until then. Recovery is counted from then; `None` here: from the fault.
    pub(crate) settled: Option<&'a (dyn Fn() -> Option<Instant> + Sync)>,
}

impl Run<'_> {
    /// Revokes at 50/s, runs `fault` after two seconds, goes on until revokes have been
    /// accepted again for three seconds and every mirror is fresh on the new primary, then
    /// checks what the module doc says.
    #[expect(
        clippy::too_many_lines,
        reason = "one failover scenario told in order: revoke, fault, observe, check"
    )]
    pub(crate) async fn through(self, fault: impl FnOnce()) -> Outcome {
        let label = self.label;
        let client = client();
        let revoke_url = self.issuer.url("/v1/revoke");
        let verify_url = self.verifier.url(REQUIREMENT);
        let offline = self.deployment.offline_issuer();
        let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let violations: Arc<Mutex<Vec<Violation>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        // Whether an unanswered revoke took the issuer's thread stacks already.
        let stacks_taken = Arc::new(AtomicBool::new(false));

        // Sweeps every acknowledged token against the verifier: none may pass once its
        // acknowledgement (plus the bound of a 202) is past.
        let prober = {
            let (client, url, tokens, answers, violations, stop) = (
                client.clone(),
                verify_url.clone(),
                Arc::clone(&tokens),
                Arc::clone(&answers),
                Arc::clone(&violations),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let due: Vec<(usize, Instant)> = answers
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|a| is_ack(a.status))
                        .map(|a| (a.token, a.answered + a.bound))
                        .filter(|(_, due)| *due <= Instant::now())
                        .collect();
                    for (token, due) in due {
                        let text = tokens.lock().unwrap()[token].clone();
                        if verify_status(&client, &url, &text).await == StatusCode::OK {
                            violations.lock().unwrap().push(Violation {
                                token,
                                after_ack: due.elapsed(),
                            });
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };

        // Watches how fresh each mirror is, and on which primary.
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let monitor = {
            let (client, bases, samples, stop) = (
                client.clone(),
                [self.issuer.url(""), self.verifier.url("")],
                Arc::clone(&samples),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let mut mirrors = Vec::new();
                    for base in &bases {
                        let ready = readyz(&client, base).await;
                        let revocation = &ready["revocation"];
                        mirrors.push((
                            revocation["staleness_seconds"]
                                .as_f64()
                                .unwrap_or(f64::INFINITY),
                            revocation["durability"]["primary"]
                                .as_str()
                                .map(str::to_owned),
                        ));
                    }
                    samples.lock().unwrap().push((at, mirrors));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };

        // Revoke at 50/s; fault after BEFORE_FAULT; go on until revokes have been accepted
        // again for AFTER_RECOVERY.
        let started = Instant::now();
        let mut fault = Some(fault);
        let mut fault_at: Option<Instant> = None;
        let mut pace = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
        let mut requests = Vec::new();
        loop {
            pace.tick().await;
            if started.elapsed() >= BEFORE_FAULT
                && let Some(fault) = fault.take()
            {
                fault_at = Some(Instant::now());
                fault();
            }
            if let Some(at) = fault_at {
                let from = self.settled.map_or(Some(at), |settled| settled());
                let recovered = answers
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|a| from.is_some_and(|from| a.sent > from) && is_ack(a.status))
                    .map(|a| a.answered)
                    .min();
                if recovered.is_some_and(|at| at.elapsed() >= AFTER_RECOVERY) {
                    break;
                }
                if at.elapsed() >= MAX_GAP {
                    // Always the end of the issuer's log: a failover that leaves it hanging is
                    // rare, and the next CI run may not show it again.
                    let stderr = self.issuer.stderr();
                    let lines: Vec<&str> = stderr.lines().collect();
                    let tail = if self.debug {
                        0
                    } else {
                        lines.len().saturating_sub(100)
                    };
                    eprintln!(
                        "issuer stderr (from line {tail}):\n{}",
                        lines[tail..].join("\n")
                    );
                    panic!("{label}: revokes not accepted again within {MAX_GAP:?} of the fault");
                }
            }
            let token = mint(&offline, "alice", "acme", "runs:read");
            let index = {
                let mut tokens = tokens.lock().unwrap();
                tokens.push(token.clone());
                tokens.len() - 1
            };
            let (client, revoke_url, verify_url, answers, violations) = (
                client.clone(),
                revoke_url.clone(),
                verify_url.clone(),
                Arc::clone(&answers),
                Arc::clone(&violations),
            );
            let (issuer_pid, stacks_taken) = (self.issuer.pid(), Arc::clone(&stacks_taken));
            requests.push(tokio::spawn(async move {
                let answer = match try_revoke(&client, &revoke_url, index, &token).await {
                    Ok(answer) => answer,
                    Err(unanswered) => {
                        // What the issuer's threads are doing while a revoke goes unanswered:
                        // the log does not say when nothing is logged. Taken once: gdb stops
                        // the process it attaches to, and a second gdb cannot attach meanwhile.
                        let dump = match issuer_pid {
                            _ if stacks_taken.swap(true, Ordering::Relaxed) => {
                                "in the first unanswered revoke's panic".to_owned()
                            }
                            Some(pid) => tokio::task::spawn_blocking(move || thread_stacks(pid))
                                .await
                                .unwrap_or_default(),
                            None => "the issuer has exited".to_owned(),
                        };
                        panic!(
                            "the issuer answers every revoke (it must not hang past its \
                             timeouts): {unanswered}\nthe issuer's threads then:\n{dump}"
                        );
                    }
                };
                let confirmed = answer.status == StatusCode::OK;
                answers.lock().unwrap().push(answer.clone());
                // A revoke confirmed by every verifier: the very next request must fail.
                if confirmed && verify_status(&client, &verify_url, &token).await == StatusCode::OK
                {
                    violations.lock().unwrap().push(Violation {
                        token: index,
                        after_ack: answer.answered.elapsed(),
                    });
                }
            }));
        }
        for request in requests {
            if let Err(unanswered) = request.await {
                // The issuer's log says why a revoke was not answered within the client's
                // timeout; its end goes into the panic message, which CI shows in full.
                let stderr = self.issuer.stderr();
                let lines: Vec<&str> = stderr.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                panic!("{label}: {unanswered}\nthe issuer's log ends:\n{tail}");
            }
        }
        let fault_at = fault_at.expect("the fault ran");

        // Every mirror fresh again on the new primary: each was seen cut off after the fault
        // or reports another primary than before it, and now is fresh.
        let fresh_at = eventually("every mirror to be fresh again", Duration::from_secs(30))
            .until(async || {
                let samples = samples.lock().unwrap();
                let before: Vec<Option<String>> = samples
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= fault_at)
                    .map(|(_, mirrors)| mirrors.iter().map(|(_, p)| p.clone()).collect())
                    .unwrap_or_default();
                let mut cut_off = [false, false];
                for (at, mirrors) in samples.iter().filter(|(at, _)| *at > fault_at) {
                    for (i, (staleness, _)) in mirrors.iter().enumerate() {
                        cut_off[i] |= *staleness >= STALE_MARK;
                    }
                    let recovered = mirrors.iter().enumerate().all(|(i, (staleness, primary))| {
                        let moved =
                            primary.is_some() && before.get(i).is_some_and(|old| old != primary);
                        (cut_off[i] || moved) && *staleness < STALE_MARK
                    });
                    if recovered {
                        return Some(*at);
                    }
                }
                None
            })
            .await;
        stop.store(true, Ordering::Relaxed);
        prober.await.unwrap();
        monitor.await.unwrap();

        let answers = answers.lock().unwrap().clone();
        let tokens = tokens.lock().unwrap().clone();
        let acked: Vec<&Answer> = answers.iter().filter(|a| is_ack(a.status)).collect();
        let refused = answers
            .iter()
            .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
            .count();
        let settled_at = self.settled.map_or(Some(fault_at), |settled| settled());
        let settled_at = settled_at.expect("the fault settled");
        let accepted_again = answers
            .iter()
            .filter(|a| a.sent > settled_at && is_ack(a.status))
            .map(|a| a.answered)
            .min()
            .expect("revokes accepted again");
        let lagging = acked
            .iter()
            .filter(|a| a.status == StatusCode::ACCEPTED)
            .count();
        eprintln!(
            "{label}: {} revokes: {} acknowledged ({lagging} of them 202), {refused} answered 503",
            answers.len(),
            acked.len(),
        );
        if settled_at > fault_at {
            eprintln!(
                "{label}: fault -> settled: {:.0} ms; settled -> revokes accepted again: {:.0} ms",
                (settled_at - fault_at).as_secs_f64() * 1000.0,
                (accepted_again - settled_at).as_secs_f64() * 1000.0
            );
        } else {
            eprintln!(
                "{label}: fault -> revokes accepted again: {:.0} ms",
                (accepted_again - fault_at).as_secs_f64() * 1000.0
            );
        }
        eprintln!(
            "{label}: fault -> all mirrors fresh: {:.0} ms",
            (fresh_at - fault_at).as_secs_f64() * 1000.0
        );

        if self.debug {
            let mut timeline: Vec<_> = answers
                .iter()
                .map(|a| {
                    (
                        a.sent.saturating_duration_since(fault_at).as_millis(),
                        a.answered.saturating_duration_since(fault_at).as_millis(),
                        a.status.as_u16(),
                    )
                })
                .collect();
            timeline.sort_unstable();
            eprintln!("timeline (sent, answered, status) ms after the fault: {timeline:?}");
            eprintln!("issuer stderr:\n{}", self.issuer.stderr());
        }

        // Never a false acknowledgement: every answer is an acknowledgement or a 503.
        let others: Vec<_> = answers
            .iter()
            .filter(|a| !is_ack(a.status) && a.status != StatusCode::SERVICE_UNAVAILABLE)
            .map(|a| a.status)
            .collect();
        assert!(others.is_empty(), "{label}: revokes answered {others:?}");
        if self.expect_gap {
            assert!(refused > 0, "{label}: the failover gap showed no 503");
        }
        let violations: Vec<String> = violations
            .lock()
            .unwrap()
            .iter()
            .map(|v| format!("token {} accepted {:?} after", v.token, v.after_ack))
            .collect();
        assert!(
            violations.is_empty(),
            "{label}: tokens accepted after their acknowledgement: {violations:?}"
        );

        // The verifier's mirror refuses every acknowledged token.
        for answer in &acked {
            let status = verify_status(&client, &verify_url, &tokens[answer.token]).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{label}: acknowledged token {} at the verifier",
                answer.token
            );
        }
        Outcome { tokens, answers }
    }
}
