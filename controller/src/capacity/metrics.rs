//! What the capacity loop counts (under `spotkube_controller_capacity_`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct CapacityMetrics {
    /// Capacity requests by pool, capacity type and outcome (`requested`, `capped`).
    pub requests: Family<Labels, Counter>,
    /// Fallbacks to a pool's on-demand group, by pool and reason (`capacity-error`,
    /// `timeout`, `at-max`).
    pub fallbacks: Family<Labels, Counter>,
    /// Requests that ended without capacity, by pool (`none` for a Node of no pool).
    pub unavailable: Family<Labels, Counter>,
    /// Nodes drained and terminated with decrement, by pool and trigger.
    pub replaced: Family<Labels, Counter>,
    /// Rebalance marks removed after the expiry (no interruption followed).
    pub expired: Counter,
    /// Requests asked for and not delivered yet.
    pub pending: Gauge,
    /// Seconds from the request's record to the request sent to Auto Scaling.
    pub recorded_to_requested: Histogram,
    /// Seconds from the request sent to its replacement Node Ready.
    pub requested_to_ready: Histogram,
    /// Offerings marked unavailable, by reason (`capacity-error`, `spot-interruption`).
    pub offerings_marked: Family<Labels, Counter>,
    /// Opted-in pods Unschedulable beyond `--pending-after` (`spotkube_controller_pending_pods`).
    pub pending_pods: Gauge,
    /// Those pods as reported, once each, by the scheduler's reason
    /// (`spotkube_controller_unschedulable_pods_total`).
    pub unschedulable: Family<Labels, Counter>,
    /// Pool scale-ups for Unschedulable pods, by pool and outcome (`requested`, `capped`);
    /// each is also in `requests`.
    pub pending_scale_ups: Family<Labels, Counter>,
}

impl CapacityMetrics {
    pub fn register(registry: &mut Registry) -> CapacityMetrics {
        let m = CapacityMetrics {
            requests: Family::default(),
            fallbacks: Family::default(),
            unavailable: Family::default(),
            replaced: Family::default(),
            expired: Counter::default(),
            pending: Gauge::default(),
            recorded_to_requested: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            requested_to_ready: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            offerings_marked: Family::default(),
            pending_pods: Gauge::default(),
            unschedulable: Family::default(),
            pending_scale_ups: Family::default(),
        };
        // The pending-pods loop reports pods whether or not capacity is on: not under
        // the capacity prefix.
        let top = registry.sub_registry_with_prefix("spotkube_controller");
        top.register(
            "pending_pods",
            "Opted-in pods Unschedulable for longer than --pending-after",
            m.pending_pods.clone(),
        );
        top.register(
            "unschedulable_pods",
            "Opted-in pods reported Unschedulable past --pending-after, by the scheduler's reason (each reason of a pod counted once)",
            m.unschedulable.clone(),
        );
        let r = registry.sub_registry_with_prefix("spotkube_controller_capacity");
        r.register(
            "requests",
            "Requests for one more node, by pool, capacity (spot, on-demand) and outcome (requested, capped)",
            m.requests.clone(),
        );
        r.register(
            "fallbacks",
            "Requests moved to the pool's on-demand group, by pool and reason (capacity-error, timeout, at-max)",
            m.fallbacks.clone(),
        );
        r.register(
            "unavailable",
            "Requests that ended without capacity, by pool (none: the node is in no pool)",
            m.unavailable.clone(),
        );
        r.register(
            "replaced",
            "Nodes drained and terminated with decrement, by pool and trigger (rebalance, interruption, scale-back)",
            m.replaced.clone(),
        );
        r.register(
            "rebalance_expired",
            "Rebalance marks removed after --rebalance-expiry without capacity or an interruption",
            m.expired.clone(),
        );
        r.register(
            "pending_requests",
            "Capacity requests asked for and not yet delivered",
            m.pending.clone(),
        );
        r.register(
            "recorded_to_requested_seconds",
            "Time from a capacity request's record on the Node to the request sent to Auto Scaling",
            m.recorded_to_requested.clone(),
        );
        r.register(
            "requested_to_ready_seconds",
            "Time from a capacity request sent to its replacement Node Ready",
            m.requested_to_ready.clone(),
        );
        r.register(
            "offerings_marked",
            "Offerings (type, zone, capacity type) marked unavailable for --ice-ttl, by reason",
            m.offerings_marked.clone(),
        );
        r.register(
            "pending_scale_ups",
            "Spot groups raised by one for Unschedulable opted-in pods, by pool and outcome (requested, capped)",
            m.pending_scale_ups.clone(),
        );
        m
    }
}

/// `[("pool", pool), (key, value)]`.
pub fn labels(pool: &str, key: &'static str, value: &str) -> Labels {
    vec![("pool", pool.to_string()), (key, value.to_string())]
}
