//! Entry points for the cargo-fuzz targets in `fuzz/` (issue 13, hardening): thin wrappers
//! over the crate-private parsers that see attacker bytes, built only with the `fuzzing`
//! feature and hidden from the docs. Nothing in the services calls them.
//!
//! Each wrapper calls the production function unchanged, so a finding here is a finding in
//! the service. Parsers that are already public (`http::bearer::bearer_token`,
//! `Settings::from_toml`, `KeyRing::from_jwks_json`, `Scope::parse_claim`, the `Verifier`)
//! are fuzzed directly and have no wrapper. How to run the targets: `docs/fuzzing.md`.

use axum::http::HeaderValue;

use crate::config::IntrospectionClient;
use crate::http::verifier::{IntrospectionClients, introspect_form, query_requirement};
use crate::policy::PathError;
use crate::revocation::Revocation;
use crate::revocation::redis::protocol::{Action, Input, LogEntry, Protocol};
use crate::revocation::redis::{Change, Event, LogFields};
use crate::token::Requirement;

/// The route policy's request-target decoding (`policy::decode_path`): the decoded segments
/// of the path, or why it is refused.
///
/// # Errors
///
/// The [`PathError`] the policy answers with.
pub fn decode_path(target: &str) -> Result<Vec<String>, PathError> {
    crate::policy::decode_path(target).map(|segments| {
        segments
            .into_iter()
            .map(std::borrow::Cow::into_owned)
            .collect()
    })
}

/// One live revocation feed message, decoded (the crate-private `Event`, made inspectable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedMessage {
    /// The sequence number.
    pub seq: u64,
    /// The generation id.
    pub generation: String,
    /// The revocation carried, or `None` for a `resync` event.
    pub revocation: Option<Revocation>,
}

/// Decodes a live feed payload `<seq> <gen> <body>` as the feed does; `None` when the feed
/// would treat it as malformed.
pub fn decode_feed_message(payload: &str) -> Option<FeedMessage> {
    let event = Event::parse(payload)?;
    Some(FeedMessage {
        seq: event.seq,
        generation: event.generation,
        revocation: match event.change {
            Change::Revoke(revocation) => Some(revocation),
            Change::Resync => None,
        },
    })
}

/// A sorted-set score read back from Redis (`revocation::redis::parse_score`).
pub fn parse_score(score: &str) -> Option<i64> {
    crate::revocation::redis::parse_score(score)
}

/// Drives the feed's sync state machine with a script of inputs, one per line, and checks
/// its "one request at a time" invariant after every input. A line's first byte picks the
/// input (by its value minus `'0'`, modulo 10) and the rest is its argument:
///
/// | byte | input | argument |
/// |---|---|---|
/// | `0` | `RunId` | the run id |
/// | `1` | `Subscribed` | |
/// | `2` | a live message, decoded as the feed decodes it | the payload |
/// | `3` | `Heartbeat` | |
/// | `4` | `Head` | `<gen> <seq>`; `-` for no generation |
/// | `5` | `GenerationCreated` | |
/// | `6` | `Resynced` | |
/// | `7` | `LogPage` | entries `<id> <gen> <body>` split by `\|`; a leading `+`: more follow |
/// | `8` | `Reseeded` | |
/// | `9` | `Disconnected` | |
///
/// Returns the number of actions the protocol asked for.
///
/// # Errors
///
/// A description of the broken invariant: an action that awaits an answer that is not the
/// last of its batch, or a position whose sequence went back within one generation.
pub fn drive_feed_protocol(script: &[u8]) -> Result<usize, String> {
    let mut protocol = Protocol::new(std::time::Duration::from_millis(200));
    let mut actions = 0;
    for line in script.split(|b| *b == b'\n') {
        let Some((&selector, argument)) = line.split_first() else {
            continue;
        };
        let argument = String::from_utf8_lossy(argument);
        let input = feed_input(selector.wrapping_sub(b'0') % 10, &argument);
        let before = protocol.position().map(|(g, s)| (g.to_owned(), s));
        let batch = protocol.handle(input.clone());
        actions += batch.len();
        if let Some(position) = batch.iter().position(awaits_answer)
            && position + 1 != batch.len()
        {
            return Err(format!("{input:?} gave {batch:?}: a request is not last"));
        }
        if let (Some((generation, seq)), Some((now_generation, now_seq))) =
            (before, protocol.position())
            && generation == now_generation
            && now_seq < seq
        {
            return Err(format!(
                "{input:?} moved {generation} back from {seq} to {now_seq}"
            ));
        }
    }
    Ok(actions)
}

/// Whether the driver must answer `action` before the protocol can go on.
fn awaits_answer(action: &Action) -> bool {
    matches!(
        action,
        Action::ReadHead
            | Action::CreateGeneration
            | Action::FullResync { .. }
            | Action::ReadLog { .. }
            | Action::Reseed { .. }
            | Action::Join
    )
}

fn feed_input(selector: u8, argument: &str) -> Input {
    match selector {
        0 => Input::RunId(argument.to_owned()),
        1 => Input::Subscribed,
        2 => Input::from_payload(Some(argument)),
        3 => Input::Heartbeat,
        4 => {
            let (generation, seq) = argument.split_once(' ').unwrap_or((argument, ""));
            Input::Head {
                generation: (generation != "-").then(|| generation.to_owned()),
                seq: seq.parse().unwrap_or(0),
            }
        }
        5 => Input::GenerationCreated,
        6 => Input::Resynced,
        7 => {
            let (is_last, entries) = match argument.strip_prefix('+') {
                Some(entries) => (false, entries),
                None => (true, argument),
            };
            let entries = entries
                .split('|')
                .filter(|entry| !entry.is_empty())
                .map(|entry| {
                    let mut parts = entry.splitn(3, ' ');
                    let id = parts.next().unwrap_or_default().to_owned();
                    let mut fields = LogFields::new();
                    for (name, value) in ["gen", "body"].into_iter().zip(parts) {
                        fields.insert(name.to_owned(), value.to_owned());
                    }
                    LogEntry::read(id, fields)
                })
                .collect();
            Input::LogPage { entries, is_last }
        }
        8 => Input::Reseeded,
        _ => Input::Disconnected,
    }
}

/// The introspection client [`introspection_authenticates`] knows.
pub const INTROSPECTION_CLIENT_ID: &str = "fuzz-client";
/// Its secret (at least 32 characters, as the configuration demands).
pub const INTROSPECTION_CLIENT_SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";

/// Whether an introspection request with `authorization` as its `Authorization` header (none
/// when the bytes are not a valid header value) authenticates as
/// [`INTROSPECTION_CLIENT_ID`].
pub fn introspection_authenticates(authorization: &[u8]) -> bool {
    let clients = IntrospectionClients::new(&[IntrospectionClient {
        id: INTROSPECTION_CLIENT_ID.to_owned(),
        secret: INTROSPECTION_CLIENT_SECRET.to_owned(),
    }]);
    let header = HeaderValue::from_bytes(authorization).ok();
    clients.authenticate(header.as_ref())
}

/// The token of an introspection form body, as the handler reads it.
///
/// # Errors
///
/// The error code the handler would answer with.
pub fn introspection_token(body: &[u8]) -> Result<String, &'static str> {
    introspect_form(body)
        .map(|form| form.token)
        .map_err(|e| e.code())
}

/// The requirement of a `/v1/verify?…` query in query mode, as forward-auth reads it.
///
/// # Errors
///
/// The error code forward-auth would answer with.
pub fn verify_query(query: &str) -> Result<Option<Requirement>, &'static str> {
    query_requirement(query).map_err(|e| e.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_script_reaches_the_following_phase_and_applies_messages() {
        // Connect, sync to g at 3, join, then one in-order message: its Apply must come out,
        // so the script language reaches the live feed and fuzzing is not stuck connecting.
        let script = b"0run-a\n1\n4g 3\n6\n4g 3\n4g 3\n\
            24 g {\"kind\":\"tenant\",\"tenant\":\"acme\",\"before\":1}";
        let mut protocol = Protocol::new(std::time::Duration::from_millis(200));
        let mut last = Vec::new();
        for line in script.split(|b| *b == b'\n') {
            let (selector, argument) = line.split_first().unwrap();
            let argument = String::from_utf8_lossy(argument);
            last = protocol.handle(feed_input(selector.wrapping_sub(b'0') % 10, &argument));
        }
        assert!(matches!(last.first(), Some(Action::Apply(_))), "{last:?}");
        assert!(drive_feed_protocol(script).is_ok());
    }

    #[test]
    fn only_the_configured_introspection_client_authenticates() {
        use base64::Engine as _;
        let basic = |text: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            )
        };
        let good = basic(&format!(
            "{INTROSPECTION_CLIENT_ID}:{INTROSPECTION_CLIENT_SECRET}"
        ));
        assert!(introspection_authenticates(good.as_bytes()));
        assert!(!introspection_authenticates(
            basic("fuzz-client:wrong").as_bytes()
        ));
        assert!(!introspection_authenticates(b"Bearer x"));
    }

    #[test]
    fn introspection_body_and_verify_query_read_as_the_handlers_do() {
        assert_eq!(introspection_token(b"token=a.b.c").as_deref(), Ok("a.b.c"));
        assert_eq!(
            introspection_token(b"token=a&token=b"),
            Err("invalid_request")
        );
        assert!(matches!(verify_query("tenant=acme"), Ok(Some(_))));
        assert_eq!(verify_query("role=admin"), Err("invalid_request"));
    }
}
