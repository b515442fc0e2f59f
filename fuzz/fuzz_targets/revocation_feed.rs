//! The revocation feed's decoding and sync state machine (src/revocation/redis/protocol.rs):
//! what a Redis server, or anyone able to publish on its channel, hands every verifier. The
//! whole input is decoded as one live message `<seq> <gen> <body>` and as a stored score, and
//! run as a script of protocol inputs (see `edgetoken::fuzzing::drive_feed_protocol`), whose
//! messages and log entries are decoded the same way.
//!
//! Properties: a decoded message re-encodes (as the `EVENT` script writes it) to a payload
//! that decodes to the same message; the protocol keeps "one request at a time" and never
//! moves a generation's applied sequence back.

#![no_main]

use edgetoken::fuzzing::{decode_feed_message, drive_feed_protocol, parse_score};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(message) = decode_feed_message(&text) {
        let body = match &message.revocation {
            Some(revocation) => serde_json::to_string(revocation).expect("serialises"),
            None => "resync".to_owned(),
        };
        let payload = format!("{} {} {}", message.seq, message.generation, body);
        assert_eq!(decode_feed_message(&payload), Some(message), "{payload:?}");
    }
    let _ = parse_score(&text);
    if let Err(broken) = drive_feed_protocol(data) {
        panic!("feed protocol invariant broken: {broken}");
    }
});
