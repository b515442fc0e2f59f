//! The revocation barrier's rules (SPEC §3, "Barrier"): who must confirm a revocation before
//! its revoke answers success, what counts as confirmed, and when a silent mirror may be left
//! out. Pure: no I/O, no clock of its own; the Redis side (`redis::barrier`) feeds it what it
//! read and carries out its answers.
//!
//! # Protocol
//!
//! - **Registration.** Every process whose mirror follows Redis has a random instance id. When
//!   its first full sync completes it joins: one script adds it to `{P}:live` (a sorted set
//!   scored by the registration's deadline on Redis' clock: `TIME` + [`registration_ttl`]) and
//!   records the position it applied in `{P}:inst` (a hash: `<generation> <seq>`); then it
//!   syncs once more and only then turns ready. Every later head read (the heartbeat, every
//!   `heartbeat`, and every sync) renews the deadline in the same script that reads the head.
//!   A clean shutdown removes both entries.
//! - **Reports.** After the feed applied a batch of changes, the mirror reports its position,
//!   coalesced (one report in flight; what was applied meanwhile goes in the next): one
//!   script raises the position in `{P}:inst` and publishes `<instance> <generation> <seq>` on
//!   `{P}:acks`. Verification does none of this: it reads the mirror as before.
//! - **Waiting.** A revoke gets sequence `S` in generation `G` from Redis, applies the change
//!   to its own mirror, then reads the roster (`TIME`, every registration with its deadline
//!   and position; expired ones are removed) and waits, listening on `{P}:acks`, until every
//!   live registration reports a position in `G` at or past `S`, for at most
//!   `barrier_timeout`. The revoking process's own registration counts as confirmed: its
//!   mirror applied the change before the wait. The answer is a [`Propagation`].
//!
//! # Soundness
//!
//! Claim (under `on_stale = "fail_closed"`): when a revoke reports `lagging = 0`, every
//! mirror that can still accept the token has applied the revocation; and each lagging mirror
//! refuses the token (or every token) within the [`Propagation::max_staleness`] reported.
//!
//! 1. A mirror accepts tokens only while fresh, and it is fresh only on the strength of a
//!    head read made while joined (the first sync does not mark it ready until a sync that
//!    began with the join's head read ended; later "heard" marks are capped at the last
//!    registering head read, also for live messages). Call `h` the moment of that head read
//!    and `D = h + max_staleness + margin` the deadline it wrote: the mirror turns stale at
//!    `h + max_staleness` on its own clock at the latest, before `D`.
//! 2. Take a revoke written at sequence `S` at time `w`, with the roster read at `r > w`.
//!    For a mirror fresh at any moment after `r`, consider the head read `h` it relies on.
//!    If `h > w`, that head read saw a sequence `>= S` and the sync it started applied `S`
//!    before the mirror was marked heard. If `h < w`, being fresh at some `t > r` means
//!    `t < h + max_staleness < D`, so `D > r`: its registration was live in the roster and
//!    the revoke waited for it: either it reported a position `>= S` in `G` (it applied `S`)
//!    or it is counted lagging.
//! 3. A registration leaves the roster only when its deadline passed (the mirror is stale by
//!    then and refuses every token it does not know to be revoked) or on a clean shutdown
//!    (the process serves nothing any more). A mirror cut off from Redis is therefore waited
//!    for, then reported lagging, never skipped.
//! 4. A lagging mirror is stale at its deadline at the latest, so it refuses within
//!    `deadline - r`, the bound reported.
//!
//! Limits: the margin ([`REGISTRATION_MARGIN`]) covers rate differences between a process's
//! monotonic clock and Redis' wall clock over one `max_staleness`, not a step of Redis'
//! clock larger than it. A position in another generation than `G` (Redis was reset in
//! between) does not confirm: the revoke reports lagging rather than guess. Under
//! `on_stale = "serve"` point 1 does not hold (a stale mirror keeps accepting), so a lagging
//! mirror may accept the token until it catches up; the lagging count is still reported.
//! The in-process store is one process whose mirror is the store: always confirmed.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use rand_core::{OsRng, RngCore};

/// Added to `max_staleness` in every registration's deadline: the slack between the mirror's
/// own clock (which turns it stale) and Redis' clock (which expires its registration).
pub const REGISTRATION_MARGIN: Duration = Duration::from_millis(250);

/// How long a registration renewed now stays in the roster: the mirror's `max_staleness`
/// plus [`REGISTRATION_MARGIN`], so it outlives the freshness the same head read gave.
pub fn registration_ttl(max_staleness: Duration) -> Duration {
    max_staleness.saturating_add(REGISTRATION_MARGIN)
}

/// What a revoke learnt about the mirrors when it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Propagation {
    /// Mirrors that applied the revocation before the answer (the revoking process's own
    /// included, when it is registered).
    pub confirmed: usize,
    /// Registered mirrors that had not confirmed within `barrier_timeout`.
    pub lagging: usize,
    /// Every lagging mirror refuses the token within this long (fail closed): it catches up,
    /// or turns stale and refuses everything. Zero when nothing lags.
    pub max_staleness: Duration,
    /// Time spent waiting for confirmations, after the store accepted the change.
    pub waited: Duration,
}

impl Propagation {
    /// The in-process store: one process, whose mirror is the store, confirms at once.
    pub fn in_process() -> Self {
        Self {
            confirmed: 1,
            lagging: 0,
            max_staleness: Duration::ZERO,
            waited: Duration::ZERO,
        }
    }

    /// Every registered mirror confirmed.
    pub fn is_confirmed(&self) -> bool {
        self.lagging == 0
    }
}

/// A mirror's id in the roster: 128 random bits as 32 hex characters, new for every process
/// start.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0_u8; 16];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes.iter().fold(String::with_capacity(32), |mut out, b| {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
            out
        }))
    }

    /// The id as stored in Redis.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({})", self.0)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A feed position: the generation followed and the last sequence applied in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) generation: String,
    pub(crate) seq: u64,
}

impl Position {
    /// Parses `<generation> <seq>`, as stored in `{P}:inst`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (generation, seq) = text.split_once(' ')?;
        if generation.is_empty() || generation.contains(' ') {
            return None;
        }
        Some(Self {
            generation: generation.to_owned(),
            seq: seq.parse().ok()?,
        })
    }

    /// Whether a mirror at this position has applied the change at `target`: same generation
    /// (sequences of different generations are not comparable), at or past its sequence.
    pub(crate) fn covers(&self, target: &Self) -> bool {
        self.generation == target.generation && self.seq >= target.seq
    }
}

/// Parses an acknowledgement published on `{P}:acks`: `<instance> <generation> <seq>`.
pub(crate) fn parse_ack(payload: &str) -> Option<(String, Position)> {
    let (instance, position) = payload.split_once(' ')?;
    if instance.is_empty() {
        return None;
    }
    Some((instance.to_owned(), Position::parse(position)?))
}

/// The latest position heard from each mirror, by report or by reading `{P}:inst`.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    positions: HashMap<String, Position>,
}

impl Acks {
    /// Records `position` for `instance`. Within a generation a position only rises (a
    /// report read late from the hash does not undo a newer one); a new generation replaces
    /// the old. Returns whether anything changed.
    pub(crate) fn record(&mut self, instance: &str, position: Position) -> bool {
        match self.positions.get_mut(instance) {
            Some(known) if known.generation == position.generation && known.seq >= position.seq => {
                false
            }
            Some(known) => {
                *known = position;
                true
            }
            None => {
                self.positions.insert(instance.to_owned(), position);
                true
            }
        }
    }

    /// Forgets mirrors no longer registered, so the table stays as small as the roster.
    pub(crate) fn retain(&mut self, roster: &Roster) {
        self.positions
            .retain(|instance, _| roster.live.iter().any(|r| r.instance == *instance));
    }

    /// How many mirrors the table holds.
    pub(crate) fn len(&self) -> usize {
        self.positions.len()
    }

    fn covers(&self, instance: &str, target: &Position) -> bool {
        self.positions
            .get(instance)
            .is_some_and(|position| position.covers(target))
    }
}

/// One registration as read from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) instance: String,
    /// Milliseconds since the epoch on Redis' clock after which the registration is void.
    pub(crate) deadline_ms: i64,
    /// The position in `{P}:inst`, if any (and readable).
    pub(crate) position: Option<Position>,
}

/// The mirrors a revoke waits for: the registrations live when it read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Roster {
    /// Redis' clock when the roster was read, milliseconds since the epoch.
    now_ms: i64,
    live: Vec<Registration>,
}

/// Where a revoke stands with the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) confirmed: usize,
    pub(crate) lagging: usize,
    /// The longest time until a lagging registration expires (its mirror is stale by then).
    pub(crate) max_staleness: Duration,
}

impl Roster {
    /// The registrations of `all` still live at `now_ms`: a registration is void from its
    /// deadline on (the script removes exactly those, with the same comparison).
    pub(crate) fn new(now_ms: i64, all: Vec<Registration>) -> Self {
        Self {
            now_ms,
            live: all.into_iter().filter(|r| r.deadline_ms > now_ms).collect(),
        }
    }

    /// The live registrations.
    pub(crate) fn live(&self) -> &[Registration] {
        &self.live
    }

    /// Counts who confirmed `target`: a mirror whose latest known position covers it, or the
    /// revoking process itself (`own`), which applied it before waiting. Everyone else lags.
    pub(crate) fn tally(&self, acks: &Acks, target: &Position, own: Option<&str>) -> Tally {
        let mut tally = Tally {
            confirmed: 0,
            lagging: 0,
            max_staleness: Duration::ZERO,
        };
        for registration in &self.live {
            let instance = registration.instance.as_str();
            if own == Some(instance) || acks.covers(instance, target) {
                tally.confirmed += 1;
            } else {
                tally.lagging += 1;
                let left = registration.deadline_ms.saturating_sub(self.now_ms);
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                tally.max_staleness = tally.max_staleness.max(left);
            }
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(generation: &str, seq: u64) -> Position {
        Position {
            generation: generation.to_owned(),
            seq,
        }
    }

    fn registration(instance: &str, deadline_ms: i64, position: Option<Position>) -> Registration {
        Registration {
            instance: instance.to_owned(),
            deadline_ms,
            position,
        }
    }

    fn acks_from(roster: &Roster) -> Acks {
        let mut acks = Acks::default();
        for r in roster.live() {
            if let Some(position) = &r.position {
                acks.record(&r.instance, position.clone());
            }
        }
        acks
    }

    #[test]
    fn a_registration_is_void_from_its_deadline_on() {
        let roster = Roster::new(
            1_000,
            vec![
                registration("expired", 999, None),
                registration("at-deadline", 1_000, None),
                registration("live", 1_001, None),
            ],
        );
        let live: Vec<_> = roster.live().iter().map(|r| r.instance.as_str()).collect();
        assert_eq!(live, ["live"]);
    }

    #[test]
    fn registration_outlives_the_staleness_bound() {
        let bound = Duration::from_mins(1);
        assert!(registration_ttl(bound) > bound);
        assert_eq!(registration_ttl(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn mirrors_at_or_past_the_sequence_confirm_and_the_others_lag() {
        let roster = Roster::new(
            1_000,
            vec![
                registration("ahead", 5_000, Some(at("g1", 9))),
                registration("exact", 5_000, Some(at("g1", 8))),
                registration("behind", 3_000, Some(at("g1", 7))),
                registration("silent", 61_000, None),
            ],
        );
        let tally = roster.tally(&acks_from(&roster), &at("g1", 8), None);
        assert_eq!(tally.confirmed, 2);
        assert_eq!(tally.lagging, 2);
        // The last lagging registration to expire bounds when all of them refuse.
        assert_eq!(tally.max_staleness, Duration::from_mins(1));
    }

    #[test]
    fn a_position_in_another_generation_does_not_confirm() {
        let roster = Roster::new(0, vec![registration("a", 10, Some(at("g2", 100)))]);
        let tally = roster.tally(&acks_from(&roster), &at("g1", 8), None);
        assert_eq!((tally.confirmed, tally.lagging), (0, 1));
    }

    #[test]
    fn the_revoking_process_confirms_itself() {
        let roster = Roster::new(0, vec![registration("me", 10, Some(at("g1", 1)))]);
        let tally = roster.tally(&Acks::default(), &at("g1", 8), Some("me"));
        assert_eq!((tally.confirmed, tally.lagging), (1, 0));
        assert_eq!(tally.max_staleness, Duration::ZERO);
    }

    #[test]
    fn an_expired_mirror_is_neither_waited_for_nor_counted() {
        let roster = Roster::new(100, vec![registration("gone", 100, None)]);
        let tally = roster.tally(&Acks::default(), &at("g1", 8), None);
        assert_eq!((tally.confirmed, tally.lagging), (0, 0));
    }

    #[test]
    fn acknowledgements_only_rise_within_a_generation() {
        let mut acks = Acks::default();
        assert!(acks.record("a", at("g1", 9)));
        assert!(!acks.record("a", at("g1", 8)));
        assert!(acks.covers("a", &at("g1", 9)));
        assert!(acks.record("a", at("g2", 1)));
        assert!(!acks.covers("a", &at("g1", 9)));
        assert!(acks.covers("a", &at("g2", 1)));
    }

    #[test]
    fn a_report_turns_a_lagging_mirror_confirmed() {
        let roster = Roster::new(0, vec![registration("a", 10, Some(at("g1", 7)))]);
        let mut acks = acks_from(&roster);
        assert_eq!(roster.tally(&acks, &at("g1", 8), None).lagging, 1);
        acks.record("a", at("g1", 8));
        assert_eq!(roster.tally(&acks, &at("g1", 8), None).confirmed, 1);
    }

    #[test]
    fn acks_forget_mirrors_that_left_the_roster() {
        let mut acks = Acks::default();
        acks.record("gone", at("g1", 1));
        acks.record("here", at("g1", 1));
        acks.retain(&Roster::new(0, vec![registration("here", 10, None)]));
        assert!(!acks.covers("gone", &at("g1", 1)));
        assert!(acks.covers("here", &at("g1", 1)));
    }

    #[test]
    fn acks_and_positions_parse_strictly() {
        assert_eq!(parse_ack("i1 g1 8"), Some(("i1".to_owned(), at("g1", 8))));
        for bad in ["", "i1", "i1 g1", "i1 g1 x", " g1 8", "i1 g1 -1", "i1  8"] {
            assert_eq!(parse_ack(bad), None, "{bad:?}");
        }
        assert_eq!(Position::parse("g1 8"), Some(at("g1", 8)));
        assert_eq!(Position::parse(""), None);
    }

    #[test]
    fn instance_ids_are_random_hex() {
        let id = InstanceId::random();
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, InstanceId::random());
    }
}
