//! What failover and recovery count (under `spotkube_controller_fargate_`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct FargateMetrics {
    /// Transitions by kind (`failover`, `failover-complete`, `abort`, `abort-complete`,
    /// `recovery`, `recovered`, `rollback`, `rollback-complete`, `not-covered`).
    pub transitions: Family<Labels, Counter>,
    /// Workloads spotkube keeps on Fargate now (states `fargate` and `recovering`).
    pub workloads: Gauge,
    /// Seconds from the message's receipt to the failover patch.
    pub receipt_to_failover: Histogram,
    /// API requests of the last recovery pass.
    pub pass_requests: Gauge,
}

impl FargateMetrics {
    pub fn register(registry: &mut Registry) -> FargateMetrics {
        let m = FargateMetrics {
            transitions: Family::default(),
            workloads: Gauge::default(),
            receipt_to_failover: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            pass_requests: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("spotkube_controller_fargate");
        r.register(
            "transitions",
            "Fargate failovers and recoveries, by transition (failover, failover-complete, abort, abort-complete, recovery, recovered, rollback, rollback-complete, not-covered)",
            m.transitions.clone(),
        );
        r.register(
            "workloads",
            "Workloads spotkube keeps on Fargate now (state fargate or recovering)",
            m.workloads.clone(),
        );
        r.register(
            "receipt_to_failover_seconds",
            "Time from message receipt to the failover patch of a workload",
            m.receipt_to_failover.clone(),
        );
        r.register(
            "pass_requests",
            "API requests the last recovery pass made",
            m.pass_requests.clone(),
        );
        m
    }

    pub fn transition(&self, kind: &str) {
        self.transitions
            .get_or_create(&vec![("transition", kind.to_string())])
            .inc();
    }
}
