//! The feed's sync protocol as a pure state machine: what a mirror does next, never how.
//!
//! [`Protocol`] holds what a mirror knows about the data set it follows (generation, highest
//! sequence applied, whether a full resync is owed, the Redis `run_id` it last saw) and the
//! phase of the current session. [`Protocol::handle`] takes one [`Input`] (a live message, a
//! heartbeat, the head of the log, the result of an action, a disconnect) and returns the
//! [`Action`]s for the driver, in order. It performs no I/O, never awaits and knows no Redis
//! type: `feed.rs` turns sockets into inputs and actions into commands, and these rules are
//! unit-tested here without a server (SPEC §3; the protocol itself is described in the parent
//! module).
//!
//! # Invariants
//!
//! - **Strictly in order.** A change is applied only if it belongs to the followed generation
//!   and carries exactly `applied + 1`; one at or below `applied` is a duplicate and skipped,
//!   one above is a gap (counted, then caught up from the log). A log entry out of sequence
//!   (trimmed), of another generation or unreadable interrupts the catch-up instead of being
//!   skipped.
//! - **The mirror never shrinks.** No action removes an entry: a full resync and a re-seed only
//!   merge, so a new `run_id`, a new or missing generation or a sequence gone backwards never
//!   costs a revocation this mirror holds.
//! - **An emptied store is re-seeded.** When the generation is missing (emptied or flushed) or
//!   another one (replaced), when the sequence is behind what was applied (rolled back), or
//!   when Redis' `run_id` changed since the mirror last synced (restarted, may have lost its
//!   last writes), the mirror writes everything it holds back ([`Action::Reseed`]) before it
//!   follows the store again, then resyncs in full.
//! - **State moves only on success.** The generation and applied sequence change when the
//!   driver reports an action done ([`Input::Resynced`], [`Input::Reseeded`], a log page); a
//!   failed action ends the session with the state as it was, and the next session retries.
//! - **One request at a time.** An action that needs an answer (reading the head or the log,
//!   a resync, a re-seed, creating a generation) is always the last of its batch, and until
//!   its answer arrives every input but [`Input::Disconnected`] fails the session.
//! - **Bounded work.** A sync that has not reached the head after [`MAX_SYNC_ROUNDS`] head
//!   reads gives up ([`Failure::NoProgress`]); the driver reconnects with backoff.
//! - **Fresh only when synced.** [`Action::MarkHeard`] follows a completed sync started by a
//!   heartbeat, a subscription or an applied message, or an in-order message; a session is
//!   marked ready only after its first complete sync. Turning stale is a matter of time, not of
//!   input, so the driver's watchdog does it.
//! - **Joined before ready.** The first complete sync does not mark the mirror ready: it
//!   joins the revocation barrier ([`Action::Join`]: register, then read the head) and syncs
//!   once more. From then on every head read renews the registration, so the mirror is only
//!   ever fresh on the strength of a head read made while registered (see
//!   `crate::revocation::barrier`).

use std::time::Duration;

use super::{Change, Event, LogFields};
use crate::revocation::Revocation;

/// Head reads a sync may take before giving up and reconnecting.
pub(crate) const MAX_SYNC_ROUNDS: usize = 8;
/// First reconnect delay; doubles up to the heartbeat.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(25);

/// Something that happened, as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// A new connection reported Redis' `run_id` (before subscribing).
    RunId(String),
    /// The live feed is subscribed: the session is connected and syncs.
    Subscribed,
    /// A live feed message.
    Message(Event),
    /// A live feed message that could not be parsed.
    MalformedMessage,
    /// The heartbeat interval elapsed.
    Heartbeat,
    /// Answers [`Action::ReadHead`]: the store's generation (if any) and last sequence.
    Head {
        /// The generation id, `None` when the key is missing.
        generation: Option<String>,
        /// The last sequence handed out, 0 when missing.
        seq: u64,
    },
    /// Answers [`Action::CreateGeneration`].
    GenerationCreated,
    /// Answers [`Action::FullResync`]: the state sets are merged into the mirror.
    Resynced,
    /// Answers [`Action::ReadLog`]: the entries from the requested sequence on.
    LogPage {
        /// The entries, in log order.
        entries: Vec<LogEntry>,
        /// The page was shorter than requested: nothing follows it in the log.
        is_last: bool,
    },
    /// Answers [`Action::Reseed`]: the store holds this mirror's entries again, under a new
    /// generation, and a `resync` event is published.
    Reseeded,
    /// The session ended: a connection failed, or the session failed ([`Action::Fail`]).
    Disconnected,
}

impl Input {
    /// The input for one live feed payload (`None` when it is not text): the decoded
    /// [`Input::Message`], else [`Input::MalformedMessage`], which makes the protocol check the
    /// log rather than trust or drop the message.
    pub(crate) fn from_payload(payload: Option<&str>) -> Self {
        payload
            .and_then(Event::parse)
            .map_or(Self::MalformedMessage, Self::Message)
    }
}

/// One log entry, as far as the driver could read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogEntry {
    /// The stream id, for the log.
    pub(crate) id: String,
    /// The sequence number in the id; `None` if unreadable.
    pub(crate) seq: Option<u64>,
    /// The `gen` field.
    pub(crate) generation: Option<String>,
    /// The `body` field; `None` if missing or unreadable.
    pub(crate) change: Option<Change>,
}

impl LogEntry {
    /// Reads one `XRANGE` entry: the sequence from the id `<seq>-0`, the `gen` and `body`
    /// fields. Whatever cannot be read stays `None`, so the protocol, not the reader, decides
    /// what an unreadable entry costs (it interrupts the catch-up).
    pub(crate) fn read(id: String, mut fields: LogFields) -> Self {
        Self {
            seq: id
                .split_once('-')
                .and_then(|(seq, _)| seq.parse::<u64>().ok()),
            generation: fields.remove("gen"),
            change: fields.get("body").and_then(|b| Change::parse_body(b)),
            id,
        }
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Record in the health that the feed is connected.
    MarkConnected,
    /// Read the head (generation and sequence); answer [`Input::Head`].
    ReadHead,
    /// Create a generation where none exists; answer [`Input::GenerationCreated`].
    CreateGeneration,
    /// Merge the whole state sets into the mirror, and record `generation` at `seq` (read
    /// before the scan) in the health; answer [`Input::Resynced`].
    FullResync {
        /// The generation the head named.
        generation: String,
        /// The head's sequence.
        seq: u64,
    },
    /// Read the log from sequence `from` on; answer [`Input::LogPage`].
    ReadLog {
        /// The first sequence wanted.
        from: u64,
    },
    /// Move the store to a new generation (compare-and-set from `expected`, empty for none),
    /// write every mirror entry back, publish `resync`; answer [`Input::Reseeded`].
    Reseed {
        /// Why the store may have lost revocations.
        reason: Reason,
        /// The generation to move off; empty to adopt whatever another mirror set.
        expected: String,
        /// The head's sequence, for the log.
        head_seq: u64,
        /// The sequence this mirror had applied, for the log.
        applied_seq: u64,
    },
    /// Merge one revocation into the mirror.
    Apply(Revocation),
    /// Record `seq` as the applied sequence in the health.
    Advance {
        /// The sequence just applied.
        seq: u64,
    },
    /// A live message skipped ahead: count the gap.
    CountGap {
        /// The sequence that was due.
        expected: u64,
        /// The sequence that arrived.
        got: u64,
    },
    /// A catch-up applied at least one entry: count it.
    CountCatchUp,
    /// A log entry's body could not be read (a full resync follows).
    MalformedLogEntry {
        /// Its stream id.
        id: String,
    },
    /// The mirror heard from Redis when the input that started this work arrived.
    MarkHeard,
    /// The mirror holds a complete state: ready.
    MarkReady,
    /// Join the revocation barrier (register this instance with the position it applied),
    /// then read the head, in one step; answer [`Input::Head`]. Emitted once, when the first
    /// full sync completes: the sync it starts must end before [`Action::MarkReady`], so a
    /// revocation written before the registration is applied before the mirror answers.
    Join,
    /// End the session; reconnect.
    Fail(Failure),
    /// Wait `after`, then open a new session.
    Reconnect {
        /// The backoff.
        after: Duration,
        /// The session had subscribed (a lost feed, not a failed attempt).
        lost: bool,
    },
}

/// Why a session is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The store kept changing for [`MAX_SYNC_ROUNDS`] rounds.
    NoProgress,
    /// An input arrived that the current phase does not expect (a driver bug); starting over
    /// is always safe.
    OutOfOrder,
}

/// Why the store is re-seeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The generation key is gone: Redis restarted empty or was flushed.
    Emptied,
    /// Another generation: a different data set (failover, restore).
    Replaced,
    /// Same generation, but the sequence is behind what this mirror applied.
    RolledBack,
    /// Redis restarted (new `run_id`) and may have lost its last writes.
    Restarted,
}

/// What to do when a sync reaches the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterSync {
    /// Nothing: the sync was started by a message that was not applied.
    Nothing,
    /// Mark heard (heartbeat, or a message applied before a full resync it asked for).
    Heard,
    /// Mark heard, then ready (first sync of a session).
    Ready,
}

/// The answer a sync waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Awaiting {
    Head,
    GenerationCreated,
    Resynced { generation: String, seq: u64 },
    Reseeded,
    Log { target: u64, applied: u64 },
}

/// How far a sync has come, and what ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// Head reads issued so far in this sync.
    round: usize,
    then: AfterSync,
}

impl Progress {
    fn awaiting(self, awaiting: Awaiting) -> Phase {
        Phase::Syncing {
            progress: self,
            awaiting,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Phase {
    /// Not subscribed: between sessions, or connecting.
    #[default]
    Connecting,
    /// Bringing the mirror up to the head; the live feed waits.
    Syncing {
        progress: Progress,
        awaiting: Awaiting,
    },
    /// At the head, applying the live feed.
    Following,
    /// Gave up on the session; waiting for [`Input::Disconnected`].
    Failed,
}

/// How a catch-up from the log ended.
enum CatchUp {
    /// Everything up to the head is applied.
    Done,
    /// The log no longer reaches back to our sequence: resync in full.
    Trimmed,
    /// The log belongs to another generation: re-read the head.
    Generation,
}

/// The feed protocol's state. See the module docs.
#[derive(Debug)]
pub(crate) struct Protocol {
    /// Generation of the data set the mirror follows; `None` until the first full sync, and
    /// again after a re-seed until the next one.
    generation: Option<String>,
    /// Highest sequence number applied in order.
    last_seq: u64,
    /// A `resync` event or a trimmed log asked for a full resync.
    needs_full: bool,
    /// `run_id` of the Redis process last connected to.
    run_id: Option<String>,
    /// Redis restarted since the mirror synced: it may have lost acknowledged writes.
    restarted: bool,
    phase: Phase,
    /// The next reconnect delay.
    backoff: Duration,
    /// The longest reconnect delay: the heartbeat (at least [`MIN_BACKOFF`]).
    max_backoff: Duration,
    /// The first full sync completed and the mirror joined the barrier: every head read from
    /// now on also renews the registration.
    joined: bool,
}

impl Protocol {
    /// A mirror that has synced nothing yet, reconnecting at most every `heartbeat`.
    pub(crate) fn new(heartbeat: Duration) -> Self {
        Self {
            generation: None,
            last_seq: 0,
            needs_full: false,
            run_id: None,
            restarted: false,
            phase: Phase::Connecting,
            backoff: MIN_BACKOFF,
            max_backoff: heartbeat.max(MIN_BACKOFF),
            joined: false,
        }
    }

    /// Whether the mirror joined the barrier: the driver then renews the registration with
    /// every head read.
    pub(crate) fn is_joined(&self) -> bool {
        self.joined
    }

    /// Whether the mirror is at the head, following the live feed (a heartbeat then starts
    /// with a head read, which the driver may send ahead while it keeps applying messages).
    pub(crate) fn is_following(&self) -> bool {
        matches!(self.phase, Phase::Following)
    }

    /// The position applied so far (generation and sequence), once a generation is followed.
    pub(crate) fn position(&self) -> Option<(&str, u64)> {
        self.generation.as_deref().map(|g| (g, self.last_seq))
    }

    /// Takes one input; returns what the driver does next, in order.
    pub(crate) fn handle(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        let phase = std::mem::take(&mut self.phase);
        self.phase = match (phase, input) {
            (phase, Input::Disconnected) => self.disconnect(&phase, &mut out),
            (Phase::Connecting, Input::RunId(run_id)) => {
                self.note_run_id(run_id);
                Phase::Connecting
            }
            (Phase::Connecting, Input::Subscribed) => {
                out.push(Action::MarkConnected);
                start_sync(AfterSync::Ready, &mut out)
            }
            (Phase::Following, Input::Heartbeat) => start_sync(AfterSync::Heard, &mut out),
            (Phase::Following, Input::MalformedMessage) => start_sync(AfterSync::Nothing, &mut out),
            (Phase::Following, Input::Message(event)) => self.on_message(event, &mut out),
            (
                Phase::Syncing {
                    progress,
                    awaiting: Awaiting::Head,
                },
                Input::Head { generation, seq },
            ) => self.on_head(progress, generation, seq, &mut out),
            (
                Phase::Syncing {
                    progress,
                    awaiting: Awaiting::GenerationCreated,
                },
                Input::GenerationCreated,
            ) => next_round(progress, &mut out),
            (
                Phase::Syncing {
                    progress,
                    awaiting: Awaiting::Resynced { generation, seq },
                },
                Input::Resynced,
            ) => {
                // Anything written during the scan is in the log after `seq`.
                self.generation = Some(generation);
                self.last_seq = seq;
                self.needs_full = false;
                next_round(progress, &mut out)
            }
            (
                Phase::Syncing {
                    progress,
                    awaiting: Awaiting::Reseeded,
                },
                Input::Reseeded,
            ) => {
                self.generation = None;
                self.last_seq = 0;
                self.needs_full = false;
                self.restarted = false;
                next_round(progress, &mut out)
            }
            (
                Phase::Syncing {
                    progress,
                    awaiting: Awaiting::Log { target, applied },
                },
                Input::LogPage { entries, is_last },
            ) => self.on_log_page(progress, target, applied, entries, is_last, &mut out),
            (phase, _) => {
                out.push(Action::Fail(Failure::OutOfOrder));
                phase
            }
        };
        out
    }

    fn note_run_id(&mut self, run_id: String) {
        // Before the first sync there is nothing this mirror could restore.
        if self.generation.is_some() && self.run_id.as_ref().is_some_and(|prev| *prev != run_id) {
            self.restarted = true;
        }
        self.run_id = Some(run_id);
    }

    fn disconnect(&mut self, phase: &Phase, out: &mut Vec<Action>) -> Phase {
        let lost = !matches!(phase, Phase::Connecting);
        if lost {
            // A session that worked starts the backoff over; failed attempts double it.
            self.backoff = MIN_BACKOFF;
        }
        let after = self.backoff;
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        out.push(Action::Reconnect { after, lost });
        Phase::Connecting
    }

    fn on_message(&mut self, event: Event, out: &mut Vec<Action>) -> Phase {
        if self.generation.as_deref() != Some(event.generation.as_str()) {
            // Another data set: let the head decide (re-seed, or a stale message).
            return start_sync(AfterSync::Nothing, out);
        }
        if event.seq <= self.last_seq {
            // A duplicate, or a change already applied by a catch-up: idempotent, skip.
            return Phase::Following;
        }
        let expected = self.last_seq + 1;
        if event.seq != expected {
            out.push(Action::CountGap {
                expected,
                got: event.seq,
            });
            return start_sync(AfterSync::Nothing, out);
        }
        self.apply(event.seq, event.change, out);
        if self.needs_full {
            start_sync(AfterSync::Heard, out)
        } else {
            out.push(Action::MarkHeard);
            Phase::Following
        }
    }

    fn apply(&mut self, seq: u64, change: Change, out: &mut Vec<Action>) {
        match change {
            Change::Revoke(revocation) => out.push(Action::Apply(revocation)),
            Change::Resync => self.needs_full = true,
        }
        self.last_seq = seq;
        out.push(Action::Advance { seq });
    }

    /// One round of a sync: compare the head with what the mirror follows.
    fn on_head(
        &mut self,
        progress: Progress,
        head: Option<String>,
        head_seq: u64,
        out: &mut Vec<Action>,
    ) -> Phase {
        if self.restarted {
            if let Some(ours) = &self.generation {
                out.push(Action::Reseed {
                    reason: Reason::Restarted,
                    expected: ours.clone(),
                    head_seq,
                    applied_seq: self.last_seq,
                });
                return progress.awaiting(Awaiting::Reseeded);
            }
            self.restarted = false;
            return next_round(progress, out);
        }
        match (&self.generation, head) {
            (None, None) => {
                // A data set nobody wrote yet: name it, then sync it.
                out.push(Action::CreateGeneration);
                progress.awaiting(Awaiting::GenerationCreated)
            }
            (None, Some(generation)) => full_resync(progress, generation, head_seq, out),
            (Some(ours), Some(theirs)) if *ours == theirs && head_seq >= self.last_seq => {
                if self.needs_full {
                    full_resync(progress, theirs, head_seq, out)
                } else if head_seq == self.last_seq {
                    self.finish(progress, out)
                } else {
                    out.push(Action::ReadLog {
                        from: self.last_seq + 1,
                    });
                    progress.awaiting(Awaiting::Log {
                        target: head_seq,
                        applied: 0,
                    })
                }
            }
            (Some(ours), observed) => {
                let reason = match observed {
                    None => Reason::Emptied,
                    Some(theirs) if theirs == *ours => Reason::RolledBack,
                    Some(_) => Reason::Replaced,
                };
                // Move off the generation we knew (compare-and-set: the first mirror wins, the
                // others adopt its choice); one somebody else already replaced stays.
                let expected = match reason {
                    Reason::RolledBack | Reason::Restarted => ours.clone(),
                    Reason::Emptied | Reason::Replaced => String::new(),
                };
                out.push(Action::Reseed {
                    reason,
                    expected,
                    head_seq,
                    applied_seq: self.last_seq,
                });
                progress.awaiting(Awaiting::Reseeded)
            }
        }
    }

    /// A sync reached the head. The first one to do so joins the barrier and syncs once more
    /// (the join's head read registers this instance), so the mirror turns ready only after
    /// a head read made while registered: any revocation written before the registration is
    /// applied by then, and any written after it is waited for by the revoke.
    fn finish(&mut self, progress: Progress, out: &mut Vec<Action>) -> Phase {
        match progress.then {
            AfterSync::Nothing => {}
            AfterSync::Heard => out.push(Action::MarkHeard),
            AfterSync::Ready if !self.joined => {
                self.joined = true;
                return next_round_with(progress, Action::Join, out);
            }
            AfterSync::Ready => out.extend([Action::MarkHeard, Action::MarkReady]),
        }
        Phase::Following
    }

    /// Applies a page of the log, at least up to the head read before it.
    fn on_log_page(
        &mut self,
        progress: Progress,
        target: u64,
        mut applied: u64,
        entries: Vec<LogEntry>,
        is_last: bool,
        out: &mut Vec<Action>,
    ) -> Phase {
        let mut interrupted = None;
        for entry in entries {
            let next = self.last_seq + 1;
            if entry.seq != Some(next) {
                interrupted = Some(CatchUp::Trimmed);
                break;
            }
            if entry.generation != self.generation {
                interrupted = Some(CatchUp::Generation);
                break;
            }
            let Some(change) = entry.change else {
                out.push(Action::MalformedLogEntry { id: entry.id });
                interrupted = Some(CatchUp::Trimmed);
                break;
            };
            self.apply(next, change, out);
            applied += 1;
        }
        let outcome = match interrupted {
            Some(outcome) => outcome,
            None if !is_last => {
                out.push(Action::ReadLog {
                    from: self.last_seq + 1,
                });
                return progress.awaiting(Awaiting::Log { target, applied });
            }
            None if self.last_seq >= target => CatchUp::Done,
            None => CatchUp::Trimmed,
        };
        if applied > 0 {
            out.push(Action::CountCatchUp);
        }
        match outcome {
            CatchUp::Done => self.finish(progress, out),
            CatchUp::Trimmed => {
                self.needs_full = true;
                next_round(progress, out)
            }
            CatchUp::Generation => next_round(progress, out),
        }
    }
}

fn start_sync(then: AfterSync, out: &mut Vec<Action>) -> Phase {
    out.push(Action::ReadHead);
    Progress { round: 1, then }.awaiting(Awaiting::Head)
}

fn next_round(progress: Progress, out: &mut Vec<Action>) -> Phase {
    next_round_with(progress, Action::ReadHead, out)
}

fn full_resync(progress: Progress, generation: String, seq: u64, out: &mut Vec<Action>) -> Phase {
    out.push(Action::FullResync {
        generation: generation.clone(),
        seq,
    });
    progress.awaiting(Awaiting::Resynced { generation, seq })
}

fn next_round_with(progress: Progress, request: Action, out: &mut Vec<Action>) -> Phase {
    if progress.round >= MAX_SYNC_ROUNDS {
        out.push(Action::Fail(Failure::NoProgress));
        return Phase::Failed;
    }
    out.push(request);
    Progress {
        round: progress.round + 1,
        ..progress
    }
    .awaiting(Awaiting::Head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::testing::jti;

    const HEARTBEAT: Duration = Duration::from_millis(200);

    fn token(n: u64) -> Revocation {
        Revocation::Token {
            jti: jti(&format!("t{n}")),
            expires_at: 1_767_229_140,
        }
    }

    fn head(generation: &str, seq: u64) -> Input {
        Input::Head {
            generation: Some(generation.to_owned()),
            seq,
        }
    }

    fn message(seq: u64, generation: &str, change: Change) -> Input {
        Input::Message(Event {
            seq,
            generation: generation.to_owned(),
            change,
        })
    }

    fn entry(seq: u64, generation: &str, change: Change) -> LogEntry {
        LogEntry {
            id: format!("{seq}-0"),
            seq: Some(seq),
            generation: Some(generation.to_owned()),
            change: Some(change),
        }
    }

    fn page(entries: Vec<LogEntry>) -> Input {
        Input::LogPage {
            entries,
            is_last: true,
        }
    }

    /// A session connected to run `run_id` and subscribed, waiting for its first head.
    fn subscribed(run_id: &str) -> Protocol {
        let mut protocol = Protocol::new(HEARTBEAT);
        assert_eq!(protocol.handle(Input::RunId(run_id.to_owned())), []);
        assert_eq!(
            protocol.handle(Input::Subscribed),
            [Action::MarkConnected, Action::ReadHead]
        );
        protocol
    }

    /// A mirror following `generation` at `seq`, on Redis run `run-a`, joined.
    fn following(generation: &str, seq: u64) -> Protocol {
        let mut protocol = subscribed("run-a");
        protocol.handle(head(generation, seq));
        protocol.handle(Input::Resynced);
        assert_eq!(protocol.handle(head(generation, seq)), [Action::Join]);
        protocol.handle(head(generation, seq));
        assert_eq!(protocol.phase, Phase::Following);
        assert!(protocol.is_joined());
        protocol
    }

    /// `following`, then the session is lost and a new one reaches Redis run `run_id`.
    fn reconnected(generation: &str, seq: u64, run_id: &str) -> Protocol {
        let mut protocol = following(generation, seq);
        protocol.handle(Input::Disconnected);
        protocol.handle(Input::RunId(run_id.to_owned()));
        protocol.handle(Input::Subscribed);
        protocol
    }

    fn reseed(reason: Reason, expected: &str, head_seq: u64, applied_seq: u64) -> Action {
        Action::Reseed {
            reason,
            expected: expected.to_owned(),
            head_seq,
            applied_seq,
        }
    }

    // Connecting and the first sync.

    #[test]
    fn subscribing_marks_connected_and_reads_the_head() {
        let mut protocol = Protocol::new(HEARTBEAT);
        assert_eq!(
            protocol.handle(Input::Subscribed),
            [Action::MarkConnected, Action::ReadHead]
        );
    }

    #[test]
    fn first_sync_of_an_unnamed_store_creates_a_generation_then_rereads_the_head() {
        let mut protocol = subscribed("run-a");
        let created = protocol.handle(Input::Head {
            generation: None,
            seq: 0,
        });
        assert_eq!(created, [Action::CreateGeneration]);
        assert_eq!(
            protocol.handle(Input::GenerationCreated),
            [Action::ReadHead]
        );
    }

    #[test]
    fn first_sync_resyncs_in_full_at_the_head() {
        let mut protocol = subscribed("run-a");
        assert_eq!(
            protocol.handle(head("g1", 7)),
            [Action::FullResync {
                generation: "g1".to_owned(),
                seq: 7
            }]
        );
    }

    #[test]
    fn full_resync_adopts_the_heads_generation_and_sequence() {
        let mut protocol = subscribed("run-a");
        protocol.handle(head("g1", 7));
        assert_eq!(protocol.handle(Input::Resynced), [Action::ReadHead]);
        assert_eq!(protocol.generation.as_deref(), Some("g1"));
        assert_eq!(protocol.last_seq, 7);
    }

    #[test]
    fn first_sync_reaching_the_head_joins_the_barrier_before_ready() {
        let mut protocol = subscribed("run-a");
        protocol.handle(head("g1", 7));
        protocol.handle(Input::Resynced);
        assert!(!protocol.is_joined());
        assert_eq!(protocol.handle(head("g1", 7)), [Action::Join]);
        assert!(protocol.is_joined());
        assert_eq!(
            protocol.handle(head("g1", 7)),
            [Action::MarkHeard, Action::MarkReady]
        );
        assert_eq!(protocol.phase, Phase::Following);
        assert_eq!(protocol.position(), Some(("g1", 7)));
    }

    #[test]
    fn a_revocation_written_before_the_join_is_applied_before_ready() {
        let mut protocol = subscribed("run-a");
        protocol.handle(head("g1", 7));
        protocol.handle(Input::Resynced);
        assert_eq!(protocol.handle(head("g1", 7)), [Action::Join]);
        // Seq 8 was written between the sync's head read and the registration.
        assert_eq!(
            protocol.handle(head("g1", 8)),
            [Action::ReadLog { from: 8 }]
        );
        assert_eq!(
            protocol.handle(page(vec![entry(8, "g1", Change::Revoke(token(8)))])),
            [
                Action::Apply(token(8)),
                Action::Advance { seq: 8 },
                Action::CountCatchUp,
                Action::MarkHeard,
                Action::MarkReady
            ]
        );
    }

    #[test]
    fn a_reconnected_mirror_does_not_join_again() {
        let mut protocol = reconnected("g1", 7, "run-a");
        assert_eq!(
            protocol.handle(head("g1", 7)),
            [Action::MarkHeard, Action::MarkReady]
        );
        assert!(protocol.is_joined());
    }

    #[test]
    fn writes_during_a_full_resync_are_caught_up_from_the_log() {
        let mut protocol = subscribed("run-a");
        protocol.handle(head("g1", 7));
        protocol.handle(Input::Resynced);
        assert_eq!(
            protocol.handle(head("g1", 9)),
            [Action::ReadLog { from: 8 }]
        );
    }

    // Live messages.

    #[test]
    fn in_order_message_is_applied_and_marks_heard() {
        let mut protocol = following("g1", 7);
        assert_eq!(
            protocol.handle(message(8, "g1", Change::Revoke(token(8)))),
            [
                Action::Apply(token(8)),
                Action::Advance { seq: 8 },
                Action::MarkHeard
            ]
        );
        assert_eq!(protocol.last_seq, 8);
    }

    #[test]
    fn duplicate_message_is_skipped() {
        let mut protocol = following("g1", 7);
        assert_eq!(
            protocol.handle(message(7, "g1", Change::Revoke(token(7)))),
            []
        );
        assert_eq!(protocol.last_seq, 7);
        assert_eq!(protocol.phase, Phase::Following);
    }

    #[test]
    fn message_past_a_gap_is_counted_and_caught_up_instead_of_applied() {
        let mut protocol = following("g1", 7);
        assert_eq!(
            protocol.handle(message(10, "g1", Change::Revoke(token(10)))),
            [
                Action::CountGap {
                    expected: 8,
                    got: 10
                },
                Action::ReadHead
            ]
        );
        assert_eq!(protocol.last_seq, 7);
    }

    #[test]
    fn message_of_another_generation_rereads_the_head_without_applying() {
        let mut protocol = following("g1", 7);
        assert_eq!(
            protocol.handle(message(8, "g2", Change::Revoke(token(8)))),
            [Action::ReadHead]
        );
        assert_eq!(protocol.last_seq, 7);
    }

    #[test]
    fn malformed_message_rereads_the_head() {
        let mut protocol = following("g1", 7);
        assert_eq!(protocol.handle(Input::MalformedMessage), [Action::ReadHead]);
    }

    #[test]
    fn sync_started_by_an_unapplied_message_does_not_mark_heard() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::MalformedMessage);
        assert_eq!(protocol.handle(head("g1", 7)), []);
        assert_eq!(protocol.phase, Phase::Following);
    }

    #[test]
    fn resync_message_is_applied_then_resyncs_in_full_then_marks_heard() {
        let mut protocol = following("g1", 7);
        assert_eq!(
            protocol.handle(message(8, "g1", Change::Resync)),
            [Action::Advance { seq: 8 }, Action::ReadHead]
        );
        assert_eq!(
            protocol.handle(head("g1", 8)),
            [Action::FullResync {
                generation: "g1".to_owned(),
                seq: 8
            }]
        );
        protocol.handle(Input::Resynced);
        assert_eq!(protocol.handle(head("g1", 8)), [Action::MarkHeard]);
    }

    // Heartbeat.

    #[test]
    fn heartbeat_reads_the_head() {
        let mut protocol = following("g1", 7);
        assert_eq!(protocol.handle(Input::Heartbeat), [Action::ReadHead]);
    }

    #[test]
    fn heartbeat_at_the_head_marks_heard_only() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        assert_eq!(protocol.handle(head("g1", 7)), [Action::MarkHeard]);
    }

    #[test]
    fn heartbeat_behind_the_head_catches_up_from_the_next_sequence() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        assert_eq!(
            protocol.handle(head("g1", 9)),
            [Action::ReadLog { from: 8 }]
        );
    }

    // Catching up from the log.

    fn catching_up(target: u64) -> Protocol {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        protocol.handle(head("g1", target));
        protocol
    }

    #[test]
    fn catch_up_applies_entries_in_order_then_completes() {
        let mut protocol = catching_up(9);
        let entries = vec![
            entry(8, "g1", Change::Revoke(token(8))),
            entry(9, "g1", Change::Revoke(token(9))),
        ];
        assert_eq!(
            protocol.handle(page(entries)),
            [
                Action::Apply(token(8)),
                Action::Advance { seq: 8 },
                Action::Apply(token(9)),
                Action::Advance { seq: 9 },
                Action::CountCatchUp,
                Action::MarkHeard
            ]
        );
        assert_eq!(protocol.last_seq, 9);
    }

    #[test]
    fn catch_up_reads_the_next_page_after_a_full_one() {
        let mut protocol = catching_up(9);
        let first = Input::LogPage {
            entries: vec![entry(8, "g1", Change::Revoke(token(8)))],
            is_last: false,
        };
        assert_eq!(
            protocol.handle(first),
            [
                Action::Apply(token(8)),
                Action::Advance { seq: 8 },
                Action::ReadLog { from: 9 }
            ]
        );
        let second = page(vec![entry(9, "g1", Change::Revoke(token(9)))]);
        assert_eq!(
            protocol.handle(second),
            [
                Action::Apply(token(9)),
                Action::Advance { seq: 9 },
                Action::CountCatchUp,
                Action::MarkHeard
            ]
        );
    }

    #[test]
    fn catch_up_over_a_trimmed_log_resyncs_in_full() {
        let mut protocol = catching_up(9);
        let trimmed = page(vec![entry(9, "g1", Change::Revoke(token(9)))]);
        assert_eq!(protocol.handle(trimmed), [Action::ReadHead]);
        assert_eq!(
            protocol.handle(head("g1", 9)),
            [Action::FullResync {
                generation: "g1".to_owned(),
                seq: 9
            }]
        );
    }

    #[test]
    fn catch_up_ending_short_of_the_head_resyncs_in_full() {
        let mut protocol = catching_up(9);
        let short = page(vec![entry(8, "g1", Change::Revoke(token(8)))]);
        assert_eq!(
            protocol.handle(short),
            [
                Action::Apply(token(8)),
                Action::Advance { seq: 8 },
                Action::CountCatchUp,
                Action::ReadHead
            ]
        );
        assert!(protocol.needs_full);
    }

    #[test]
    fn catch_up_that_applied_nothing_is_not_counted() {
        let mut protocol = catching_up(9);
        assert_eq!(protocol.handle(page(Vec::new())), [Action::ReadHead]);
    }

    #[test]
    fn catch_up_into_another_generation_rereads_the_head_without_resync() {
        let mut protocol = catching_up(9);
        let other = page(vec![entry(8, "g2", Change::Revoke(token(8)))]);
        assert_eq!(protocol.handle(other), [Action::ReadHead]);
        assert!(!protocol.needs_full);
        assert_eq!(protocol.last_seq, 7);
    }

    #[test]
    fn malformed_log_entry_is_reported_and_resyncs_in_full() {
        let mut protocol = catching_up(9);
        let mut malformed = entry(8, "g1", Change::Resync);
        malformed.change = None;
        assert_eq!(
            protocol.handle(page(vec![malformed])),
            [
                Action::MalformedLogEntry {
                    id: "8-0".to_owned()
                },
                Action::ReadHead
            ]
        );
        assert!(protocol.needs_full);
    }

    #[test]
    fn entry_with_unreadable_id_interrupts_the_catch_up() {
        let mut protocol = catching_up(9);
        let mut unreadable = entry(8, "g1", Change::Revoke(token(8)));
        unreadable.seq = None;
        assert_eq!(protocol.handle(page(vec![unreadable])), [Action::ReadHead]);
        assert!(protocol.needs_full);
    }

    #[test]
    fn resync_in_the_log_is_owed_until_the_next_sync() {
        // As before the state machine was extracted: a catch-up that reaches the head
        // completes, and the full resync the `resync` entry asked for runs on the next sync.
        let mut protocol = catching_up(8);
        assert_eq!(
            protocol.handle(page(vec![entry(8, "g1", Change::Resync)])),
            [
                Action::Advance { seq: 8 },
                Action::CountCatchUp,
                Action::MarkHeard
            ]
        );
        protocol.handle(Input::Heartbeat);
        assert_eq!(
            protocol.handle(head("g1", 8)),
            [Action::FullResync {
                generation: "g1".to_owned(),
                seq: 8
            }]
        );
    }

    // A store that may have lost revocations.

    #[test]
    fn emptied_store_is_reseeded_under_any_generation() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        let emptied = Input::Head {
            generation: None,
            seq: 0,
        };
        assert_eq!(
            protocol.handle(emptied),
            [reseed(Reason::Emptied, "", 0, 7)]
        );
    }

    #[test]
    fn replaced_generation_is_reseeded_under_any_generation() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        assert_eq!(
            protocol.handle(head("g2", 30)),
            [reseed(Reason::Replaced, "", 30, 7)]
        );
    }

    #[test]
    fn sequence_behind_the_applied_one_is_reseeded_off_our_generation() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        assert_eq!(
            protocol.handle(head("g1", 5)),
            [reseed(Reason::RolledBack, "g1", 5, 7)]
        );
    }

    #[test]
    fn reseed_keeps_the_state_until_done() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        protocol.handle(head("g2", 30));
        assert_eq!(protocol.generation.as_deref(), Some("g1"));
        assert_eq!(protocol.last_seq, 7);
    }

    #[test]
    fn reseeded_mirror_forgets_the_generation_and_resyncs_in_full() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        protocol.handle(head("g2", 30));
        assert_eq!(protocol.handle(Input::Reseeded), [Action::ReadHead]);
        assert_eq!(protocol.generation, None);
        assert_eq!(protocol.last_seq, 0);
        assert_eq!(
            protocol.handle(head("g3", 1)),
            [Action::FullResync {
                generation: "g3".to_owned(),
                seq: 1
            }]
        );
    }

    #[test]
    fn new_run_id_after_a_sync_is_reseeded_off_our_generation() {
        let mut protocol = reconnected("g1", 7, "run-b");
        assert_eq!(
            protocol.handle(head("g1", 7)),
            [reseed(Reason::Restarted, "g1", 7, 7)]
        );
    }

    #[test]
    fn same_run_id_after_a_reconnect_catches_up() {
        let mut protocol = reconnected("g1", 7, "run-a");
        assert_eq!(
            protocol.handle(head("g1", 9)),
            [Action::ReadLog { from: 8 }]
        );
    }

    #[test]
    fn new_run_id_before_any_sync_is_not_a_restart() {
        let mut protocol = Protocol::new(HEARTBEAT);
        protocol.handle(Input::RunId("run-a".to_owned()));
        protocol.handle(Input::Disconnected);
        protocol.handle(Input::RunId("run-b".to_owned()));
        protocol.handle(Input::Subscribed);
        assert_eq!(
            protocol.handle(head("g1", 7)),
            [Action::FullResync {
                generation: "g1".to_owned(),
                seq: 7
            }]
        );
    }

    #[test]
    fn restart_is_reseeded_once() {
        let mut protocol = reconnected("g1", 7, "run-b");
        protocol.handle(head("g1", 7));
        protocol.handle(Input::Reseeded);
        assert!(!protocol.restarted);
        assert_eq!(
            protocol.handle(head("g2", 1)),
            [Action::FullResync {
                generation: "g2".to_owned(),
                seq: 1
            }]
        );
    }

    #[test]
    fn restart_whose_reseed_failed_is_reseeded_on_the_next_session() {
        let mut protocol = reconnected("g1", 7, "run-b");
        protocol.handle(head("g1", 7));
        protocol.handle(Input::Disconnected);
        protocol.handle(Input::RunId("run-b".to_owned()));
        protocol.handle(Input::Subscribed);
        assert_eq!(
            protocol.handle(head("g1", 7)),
            [reseed(Reason::Restarted, "g1", 7, 7)]
        );
    }

    #[test]
    fn no_action_ever_removes_from_the_mirror() {
        // The never-shrink invariant is structural: among everything a re-seed and a full
        // resync lead to, nothing but `Apply` touches the mirror's entries, and it merges.
        let mut protocol = following("g1", 7);
        let mut seen = protocol.handle(Input::Heartbeat);
        seen.extend(protocol.handle(Input::Head {
            generation: None,
            seq: 0,
        }));
        seen.extend(protocol.handle(Input::Reseeded));
        seen.extend(protocol.handle(head("g2", 1)));
        seen.extend(protocol.handle(Input::Resynced));
        seen.extend(protocol.handle(head("g2", 1)));
        assert_eq!(
            seen,
            [
                Action::ReadHead,
                reseed(Reason::Emptied, "", 0, 7),
                Action::ReadHead,
                Action::FullResync {
                    generation: "g2".to_owned(),
                    seq: 1
                },
                Action::ReadHead,
                Action::MarkHeard
            ]
        );
    }

    // Giving up and reconnecting.

    #[test]
    fn sync_gives_up_after_max_rounds_without_reaching_the_head() {
        let mut protocol = subscribed("run-a");
        for _ in 1..MAX_SYNC_ROUNDS {
            protocol.handle(Input::Head {
                generation: None,
                seq: 0,
            });
            assert_eq!(
                protocol.handle(Input::GenerationCreated),
                [Action::ReadHead]
            );
        }
        protocol.handle(Input::Head {
            generation: None,
            seq: 0,
        });
        assert_eq!(
            protocol.handle(Input::GenerationCreated),
            [Action::Fail(Failure::NoProgress)]
        );
    }

    #[test]
    fn input_the_phase_does_not_expect_fails_the_session() {
        let mut protocol = following("g1", 7);
        assert_eq!(
            protocol.handle(Input::Resynced),
            [Action::Fail(Failure::OutOfOrder)]
        );
    }

    #[test]
    fn live_message_during_a_sync_fails_the_session() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Heartbeat);
        assert_eq!(
            protocol.handle(message(8, "g1", Change::Revoke(token(8)))),
            [Action::Fail(Failure::OutOfOrder)]
        );
    }

    #[test]
    fn failed_attempts_back_off_doubling_up_to_the_heartbeat() {
        let mut protocol = Protocol::new(HEARTBEAT);
        let delays: Vec<_> = (0..5)
            .flat_map(|_| protocol.handle(Input::Disconnected))
            .collect();
        let expected = [25, 50, 100, 200, 200].map(|ms| Action::Reconnect {
            after: Duration::from_millis(ms),
            lost: false,
        });
        assert_eq!(delays, expected);
    }

    #[test]
    fn lost_session_restarts_the_backoff_and_counts_as_lost() {
        let mut protocol = Protocol::new(HEARTBEAT);
        protocol.handle(Input::Disconnected);
        protocol.handle(Input::Disconnected);
        protocol.handle(Input::Subscribed);
        assert_eq!(
            protocol.handle(Input::Disconnected),
            [Action::Reconnect {
                after: MIN_BACKOFF,
                lost: true
            }]
        );
    }

    #[test]
    fn backoff_is_at_least_the_minimum_with_a_tiny_heartbeat() {
        let mut protocol = Protocol::new(Duration::from_millis(1));
        protocol.handle(Input::Disconnected);
        assert_eq!(
            protocol.handle(Input::Disconnected),
            [Action::Reconnect {
                after: MIN_BACKOFF,
                lost: false
            }]
        );
    }

    #[test]
    fn failed_session_counts_as_lost() {
        let mut protocol = following("g1", 7);
        protocol.handle(Input::Resynced);
        assert_eq!(
            protocol.handle(Input::Disconnected),
            [Action::Reconnect {
                after: MIN_BACKOFF,
                lost: true
            }]
        );
    }

    #[test]
    fn reconnect_keeps_the_applied_sequence_and_catches_up_from_it() {
        let mut protocol = following("g1", 7);
        protocol.handle(message(8, "g1", Change::Revoke(token(8))));
        protocol.handle(Input::Disconnected);
        protocol.handle(Input::RunId("run-a".to_owned()));
        protocol.handle(Input::Subscribed);
        assert_eq!(
            protocol.handle(head("g1", 12)),
            [Action::ReadLog { from: 9 }]
        );
    }

    #[test]
    fn first_sync_after_a_reconnect_marks_ready_again() {
        let mut protocol = reconnected("g1", 7, "run-a");
        assert_eq!(
            protocol.handle(head("g1", 7)),
            [Action::MarkHeard, Action::MarkReady]
        );
    }

    #[test]
    fn log_entry_reads_sequence_generation_and_body_and_keeps_what_it_cannot_read_as_none() {
        let fields = |pairs: &[(&str, &str)]| -> LogFields {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            LogEntry::read("5-0".into(), fields(&[("gen", "g1"), ("body", "resync")])),
            LogEntry {
                id: "5-0".into(),
                seq: Some(5),
                generation: Some("g1".into()),
                change: Some(Change::Resync),
            }
        );
        assert_eq!(
            LogEntry::read("x-0".into(), fields(&[("body", "{not json")])),
            LogEntry {
                id: "x-0".into(),
                seq: None,
                generation: None,
                change: None,
            }
        );
    }

    #[test]
    fn payload_that_does_not_decode_is_a_malformed_message() {
        assert_eq!(
            Input::from_payload(Some("3 g1 resync")),
            message(3, "g1", Change::Resync)
        );
        for payload in [
            None,
            Some(""),
            Some("3 g1"),
            Some("x g1 resync"),
            Some("3 g1 {}"),
        ] {
            assert_eq!(
                Input::from_payload(payload),
                Input::MalformedMessage,
                "{payload:?}"
            );
        }
    }
}
