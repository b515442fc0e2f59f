//! Two-way set-associative lookup for the small per-thread tables on the hot path (the
//! verified-token cache's near tier, the forward-auth answer memo).
//!
//! A direct-mapped table loses both entries whenever two keys in use share a slot, and with a
//! hundred keys in a thousand slots about one in ten do. Two slots per set, most recently used
//! first, keep both unless a third key arrives.

/// Looks for the entry `matches` accepts in `set`; when found, moves it to the front (most
/// recently used) and returns it. A miss changes nothing.
pub(crate) fn find<T>(set: &mut [Option<T>; 2], matches: impl Fn(&T) -> bool) -> Option<&T> {
    let holds = |slot: &Option<T>| slot.as_ref().is_some_and(&matches);
    if !holds(&set[0]) {
        if !holds(&set[1]) {
            return None;
        }
        set.swap(0, 1);
    }
    set[0].as_ref()
}

/// Puts `value` in front of `set`, displacing the least recently used entry.
pub(crate) fn insert<T>(set: &mut [Option<T>; 2], value: T) {
    set.swap(0, 1);
    set[0] = Some(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uses `key` in `set` as a caller does: `true` on a hit, else stores it.
    fn touch(set: &mut [Option<u32>; 2], key: u32) -> bool {
        let found = find(set, |held| *held == key).is_some();
        if !found {
            insert(set, key);
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
        insert(&mut set, 9);
        assert_eq!(set, [Some(9), Some(2)], "the least recently used went");
    }
}
