//! The unavailable-offering cache: an offering `(instance type, zone, capacity type)` is
//! marked for a TTL (3 min by default, as Karpenter's) after a capacity error or a spot
//! interruption of it. Launchers skip marked offerings; [`IceCache::marked`] lists them
//! with their expiry for the ranking ConfigMap.
//!
//! Not [`crate::ttl_cache::TtlCache`]: that one reads the monotonic clock itself and
//! cannot list its entries, while marks need an expiry in wall-clock time (published)
//! and a clock tests can move.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::CapacityType;

/// Karpenter's unavailable-offerings TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3 * 60);

/// What the cache reads the time from; [`system_clock`] outside tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// Where an instance can be launched from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Offering {
    pub instance_type: String,
    pub zone: String,
    pub capacity: CapacityType,
}

impl Offering {
    pub fn new(instance_type: &str, zone: &str, capacity: CapacityType) -> Offering {
        Offering {
            instance_type: instance_type.to_string(),
            zone: zone.to_string(),
            capacity,
        }
    }
}

impl Offering {
    fn order_key(&self) -> (&str, &str, &'static str) {
        (&self.instance_type, &self.zone, self.capacity.as_str())
    }
}

impl fmt::Display for Offering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}/{}",
            self.instance_type,
            self.zone,
            self.capacity.as_str()
        )
    }
}

/// Why an offering is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A launch failed for want of capacity (InsufficientInstanceCapacity and kin).
    CapacityError,
    /// AWS is reclaiming spot instances of it.
    SpotInterruption,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CapacityError => "capacity-error",
            Reason::SpotInterruption => "spot-interruption",
        }
    }
}

/// One marked offering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub offering: Offering,
    /// The latest reason it was marked for.
    pub reason: Reason,
    pub expires: Timestamp,
}

/// Shared by clones.
#[derive(Clone)]
pub struct IceCache {
    ttl: Duration,
    clock: Clock,
    entries: Arc<Mutex<HashMap<Offering, (Reason, Timestamp)>>>,
}

impl fmt::Debug for IceCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceCache")
            .field("ttl", &self.ttl)
            .field("marked", &self.marked())
            .finish()
    }
}

impl Default for IceCache {
    fn default() -> Self {
        IceCache::new(DEFAULT_TTL)
    }
}

impl IceCache {
    pub fn new(ttl: Duration) -> IceCache {
        IceCache::with_clock(ttl, system_clock())
    }

    pub fn with_clock(ttl: Duration, clock: Clock) -> IceCache {
        IceCache {
            ttl,
            clock,
            entries: Arc::default(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Marks `offering` unavailable for the TTL from now (a mark never shortens an
    /// existing one) and returns its expiry.
    pub fn mark(&self, offering: Offering, reason: Reason) -> Timestamp {
        let now = (self.clock)();
        // A TTL beyond jiff's range (not a real configuration) saturates.
        let expires = now.checked_add(self.ttl).unwrap_or(Timestamp::MAX);
        let mut entries = self.entries.lock().expect("ice cache lock");
        // Offerings are few (types x zones x 2); dropping the expired keeps it that way.
        entries.retain(|_, (_, until)| *until > now);
        let entry = entries.entry(offering).or_insert((reason, expires));
        *entry = (reason, entry.1.max(expires));
        entry.1
    }

    /// Whether `offering` is marked and the mark has not expired.
    pub fn is_unavailable(&self, offering: &Offering) -> bool {
        let now = (self.clock)();
        let entries = self.entries.lock().expect("ice cache lock");
        entries.get(offering).is_some_and(|(_, until)| *until > now)
    }

    /// The marks in force, ordered by type, zone and capacity type.
    pub fn marked(&self) -> Vec<Mark> {
        let now = (self.clock)();
        let entries = self.entries.lock().expect("ice cache lock");
        let mut marks: Vec<Mark> = entries
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(offering, (reason, expires))| Mark {
                offering: offering.clone(),
                reason: *reason,
                expires: *expires,
            })
            .collect();
        marks.sort_by(|a, b| a.offering.order_key().cmp(&b.offering.order_key()));
        marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves by hand.
    fn manual_clock() -> (Clock, Arc<Mutex<Timestamp>>) {
        let now = Arc::new(Mutex::new(
            "2026-11-20T10:00:00Z".parse::<Timestamp>().unwrap(),
        ));
        let read = now.clone();
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    fn advance(now: &Mutex<Timestamp>, secs: u64) {
        let mut t = now.lock().unwrap();
        *t = t.checked_add(Duration::from_secs(secs)).unwrap();
    }

    #[test]
    fn a_mark_holds_for_the_ttl_and_then_lapses() {
        let (clock, now) = manual_clock();
        let cache = IceCache::with_clock(DEFAULT_TTL, clock);
        let ice = Offering::new("m7g.large", "us-east-1a", CapacityType::Spot);
        let expires = cache.mark(ice.clone(), Reason::CapacityError);
        assert_eq!(expires.to_string(), "2026-11-20T10:03:00Z");
        assert!(cache.is_unavailable(&ice));
        // Another zone, or the on-demand offering of the same type, is not marked.
        assert!(!cache.is_unavailable(&Offering::new(
            "m7g.large",
            "us-east-1b",
            CapacityType::Spot
        )));
        assert!(!cache.is_unavailable(&Offering::new(
            "m7g.large",
            "us-east-1a",
            CapacityType::OnDemand
        )));
        advance(&now, 179);
        assert!(cache.is_unavailable(&ice));
        advance(&now, 1);
        assert!(!cache.is_unavailable(&ice), "expired at exactly the TTL");
        assert!(cache.marked().is_empty());
    }

    #[test]
    fn marking_again_extends_and_keeps_the_latest_reason() {
        let (clock, now) = manual_clock();
        let cache = IceCache::with_clock(Duration::from_secs(60), clock);
        let offering = Offering::new("c7g.large", "us-east-1c", CapacityType::Spot);
        cache.mark(offering.clone(), Reason::SpotInterruption);
        advance(&now, 30);
        let expires = cache.mark(offering.clone(), Reason::CapacityError);
        assert_eq!(expires.to_string(), "2026-11-20T10:01:30Z");
        advance(&now, 45);
        assert_eq!(
            cache.marked(),
            [Mark {
                offering,
                reason: Reason::CapacityError,
                expires
            }]
        );
    }

    #[test]
    fn marked_lists_live_marks_in_order_and_clones_share_them() {
        let (clock, now) = manual_clock();
        let cache = IceCache::with_clock(Duration::from_secs(60), clock);
        let other = cache.clone();
        other.mark(
            Offering::new("m7g.large", "us-east-1b", CapacityType::Spot),
            Reason::CapacityError,
        );
        advance(&now, 40);
        other.mark(
            Offering::new("c7g.large", "us-east-1a", CapacityType::OnDemand),
            Reason::CapacityError,
        );
        cache.mark(
            Offering::new("c7g.large", "us-east-1a", CapacityType::Spot),
            Reason::SpotInterruption,
        );
        let listed = |cache: &IceCache| {
            cache
                .marked()
                .iter()
                .map(|m| format!("{} {} {}", m.offering, m.reason.as_str(), m.expires))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            listed(&cache),
            [
                "c7g.large@us-east-1a/on-demand capacity-error 2026-11-20T10:01:40Z",
                "c7g.large@us-east-1a/spot spot-interruption 2026-11-20T10:01:40Z",
                "m7g.large@us-east-1b/spot capacity-error 2026-11-20T10:01:00Z",
            ]
        );
        advance(&now, 20);
        assert_eq!(listed(&cache).len(), 2, "the first mark lapsed");
    }
}
