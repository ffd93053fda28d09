//! A small bounded cache with a time-to-live per entry, shared by the adapters that look
//! platform facts up over REST (Mattermost parent posts and users, Matrix event senders).

use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A bounded map with a time-to-live per entry: at most `cap` entries; when full, expired
/// entries are dropped first, then everything.
pub(crate) struct TtlCache<V> {
    map: HashMap<String, (V, Instant)>,
    ttl: Duration,
    cap: usize,
}

impl<V: Clone> TtlCache<V> {
    pub(crate) fn new(ttl: Duration, cap: usize) -> Self {
        TtlCache { map: HashMap::new(), ttl, cap }
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        self.map.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(v, _)| v.clone())
    }

    pub(crate) fn insert(&mut self, key: String, value: V) {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            let ttl = self.ttl;
            self.map.retain(|_, (_, at)| at.elapsed() < ttl);
            if self.map.len() >= self.cap {
                self.map.clear();
            }
        }
        self.map.insert(key, (value, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_cache_expires_and_stays_bounded() {
        let mut c = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..5 {
            c.insert(format!("k{i}"), i);
        }
        assert!(c.map.len() <= 3);
        assert_eq!(c.get("k4"), Some(4));
        let mut z = TtlCache::new(Duration::ZERO, 3);
        z.insert("a".into(), 1);
        assert_eq!(z.get("a"), None, "expired");
    }
}
