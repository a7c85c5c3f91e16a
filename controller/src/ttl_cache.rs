//! A small map whose entries expire after a fixed time to live, shared by clones. It
//! stays bounded: expired entries are dropped whenever it grows past [`PRUNE_AT`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entry count above which an insert first drops every expired entry.
const PRUNE_AT: usize = 1024;

#[derive(Clone)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<K, (Instant, V)>>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> TtlCache<K, V> {
        TtlCache {
            ttl,
            entries: Arc::default(),
        }
    }

    /// The value of `key`, unless missing or older than the TTL.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entries = self.entries.lock().expect("cache lock");
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= PRUNE_AT {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(key, (Instant::now(), value));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.insert("ns".to_string(), 1);
        assert_eq!(cache.get("ns"), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get("ns"), None);
    }

    #[test]
    fn expired_entries_are_pruned_once_the_cache_is_large() {
        let cache = TtlCache::new(Duration::from_millis(20));
        for i in 0..PRUNE_AT {
            cache.insert(i, i);
        }
        std::thread::sleep(Duration::from_millis(30));
        cache.insert(PRUNE_AT, 0);
        assert_eq!(cache.len(), 1, "only the fresh entry is left");
    }
}
