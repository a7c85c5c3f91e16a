//! The same notification twice within a window is sent once: a redelivered SQS
//! message, or a reconcile pass asking again, repeats the Event but tells nobody
//! anything new.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct Dedup<K> {
    window: Duration,
    seen: HashMap<K, Instant>,
}

impl<K: Hash + Eq> Dedup<K> {
    pub fn new(window: Duration) -> Dedup<K> {
        Dedup {
            window,
            seen: HashMap::new(),
        }
    }

    /// Whether `key` was not seen within the window before `now` (and remembers it).
    pub fn first(&mut self, key: K, now: Instant) -> bool {
        let window = self.window;
        // Bounded by what the rate of Events puts in one window.
        self.seen
            .retain(|_, at| now.saturating_duration_since(*at) < window);
        match self.seen.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_passes_once_per_window() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(60));
        assert!(dedup.first("a", t0));
        assert!(!dedup.first("a", t0 + Duration::from_secs(59)));
        assert!(dedup.first("b", t0 + Duration::from_secs(59)));
        // The window counts from the first sighting, not the last.
        assert!(dedup.first("a", t0 + Duration::from_secs(60)));
        assert!(!dedup.first("a", t0 + Duration::from_secs(61)));
    }
}
