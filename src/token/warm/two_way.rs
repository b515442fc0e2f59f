//! Two-way set-associative tables for the per-thread tiers (the near tier, the answer memo).
//!
//! A direct-mapped table loses both entries whenever two keys in use share a slot, and with a
//! hundred keys in a thousand slots about one in ten do. Two slots per set, most recently used
//! first, keep both unless a third key arrives.
//!
//! Invariants, kept by the only functions that change a set: a set is ordered most recently
//! used first, and holds each key at most once ([`put`] replaces an entry with the same key
//! instead of adding a second one). A table has a power-of-two count of sets, checked at
//! compile time, so a hash picks its set by masking.

/// Two slots, most recently used first.
pub(super) type Set<T> = [Option<T>; 2];

/// `N` sets of two slots, allocated on first use (a thread that never serves a warm request
/// never pays for one). At most `2 * N` entries, ever.
pub(super) struct Sets<T, const N: usize> {
    sets: Vec<Set<T>>,
}

impl<T, const N: usize> Sets<T, N> {
    /// An empty table; nothing is allocated until [`Sets::set`] is first called.
    pub(super) const fn new() -> Self {
        const { assert!(N.is_power_of_two(), "a set is picked by masking the hash") };
        Self { sets: Vec::new() }
    }

    /// The set `hash` falls in (its low bits pick it).
    pub(super) fn set(&mut self, hash: u64) -> &mut Set<T> {
        if self.sets.is_empty() {
            self.sets.resize_with(N, || [None, None]);
        }
        // Truncating the u64 on a 32-bit target only drops high bits the mask discards anyway.
        #[expect(clippy::cast_possible_truncation, reason = "masked to the set count")]
        let index = (hash as usize) & (N - 1);
        &mut self.sets[index]
    }
}

/// Looks for the entry `matches` accepts in `set`; when found, moves it to the front (most
/// recently used) and returns it. A miss changes nothing.
pub(super) fn find<T>(set: &mut Set<T>, matches: impl Fn(&T) -> bool) -> Option<&T> {
    let holds = |slot: &Option<T>| slot.as_ref().is_some_and(&matches);
    debug_assert!(
        !(holds(&set[0]) && holds(&set[1])),
        "a set holds each key at most once"
    );
    if !holds(&set[0]) {
        if !holds(&set[1]) {
            return None;
        }
        set.swap(0, 1);
    }
    set[0].as_ref()
}

/// Puts `value` in front of `set`: in place of the entry with the same key (`matches`) if
/// there is one, else displacing the least recently used entry.
pub(super) fn put<T>(set: &mut Set<T>, value: T, matches: impl Fn(&T) -> bool) {
    let holds = |slot: &Option<T>| slot.as_ref().is_some_and(&matches);
    if !holds(&set[0]) {
        // Either the second slot holds the key, and is overwritten, or it holds the least
        // recently used entry, which goes.
        set.swap(0, 1);
    }
    set[0] = Some(value);
    debug_assert!(!holds(&set[1]), "a set holds each key at most once");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uses `key` in `set` as a caller does: `true` on a hit, else stores it.
    fn touch(set: &mut Set<u32>, key: u32) -> bool {
        let found = find(set, |held| *held == key).is_some();
        if !found {
            put(set, key, |held| *held == key);
        }
        found
    }

    #[test]
    fn keeps_the_two_most_recently_used() {
        let mut set = [None, None];
        assert!(!touch(&mut set, 1));
        assert!(!touch(&mut set, 2));
        assert!(touch(&mut set, 1));
        assert!(touch(&mut set, 2));
        // 1 was used before 2, so 3 displaces 1.
        assert!(!touch(&mut set, 3));
        assert!(touch(&mut set, 2));
        assert!(touch(&mut set, 3));
        assert!(!touch(&mut set, 1));
    }

    #[test]
    fn an_empty_slot_is_filled_before_anything_is_displaced() {
        let mut set = [None, None];
        assert!(!touch(&mut set, 7));
        assert!(!touch(&mut set, 8));
        assert_eq!(set, [Some(8), Some(7)]);
    }

    #[test]
    fn a_miss_leaves_the_order_alone() {
        let mut set = [Some(2), Some(1)];
        assert!(find(&mut set, |held| *held == 9).is_none());
        assert_eq!(set, [Some(2), Some(1)]);
        put(&mut set, 9, |held| *held == 9);
        assert_eq!(set, [Some(9), Some(2)], "the least recently used went");
    }

    #[test]
    fn putting_a_held_key_replaces_it_in_place() {
        // Keys are the tens; the units tell versions of one key apart.
        let same_key = |key: u32| move |held: &u32| *held / 10 == key / 10;
        let mut set = [Some(20), Some(10)];
        put(&mut set, 11, same_key(11));
        assert_eq!(set, [Some(11), Some(20)], "the older version went, not 20");
        put(&mut set, 12, same_key(12));
        assert_eq!(set, [Some(12), Some(20)]);
    }

    #[test]
    fn a_table_picks_sets_by_the_low_bits_of_the_hash() {
        let mut table: Sets<u32, 4> = Sets::new();
        put(table.set(1), 1, |held| *held == 1);
        assert_eq!(
            *table.set(5),
            [Some(1), None],
            "5 and 1 share their low bits"
        );
        assert_eq!(*table.set(2), [None, None]);
    }
}
