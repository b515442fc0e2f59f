//! Two-way set-associative lookup for the small per-thread tables on the hot path (the
//! verified-token cache's near tier, the forward-auth answer memo).
//!
//! A direct-mapped table loses both entries whenever two keys in use share a slot, and with a
//! hundred keys in a thousand slots about one in ten do. Two slots per set, most recently used
//! first, keep both unless a third key arrives.

/// Looks for the entry `matches` accepts in `set` and moves it to the front: `true` when found
/// (it is `set[0]`). Otherwise the least recently used slot is moved to the front, for the
/// caller to overwrite, and the result is `false`.
pub(crate) fn find_or_evict<T>(set: &mut [Option<T>; 2], matches: impl Fn(&T) -> bool) -> bool {
    let holds = |slot: &Option<T>| slot.as_ref().is_some_and(&matches);
    if holds(&set[0]) {
        return true;
    }
    // A hit on the second moves it to the front; a miss puts the least recently used there.
    set.swap(0, 1);
    holds(&set[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uses `key` in `set` as a caller does: `true` on a hit, else stores it.
    fn touch(set: &mut [Option<u32>; 2], key: u32) -> bool {
        let found = find_or_evict(set, |held| *held == key);
        if !found {
            set[0] = Some(key);
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
}
