//! The controller's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct Metrics {
    /// Messages received, by event kind (`unparseable`, `unknown`, `irrelevant` too).
    pub events: Family<Labels, Counter>,
    /// Actions carried out, by action, outcome and error category.
    pub actions: Family<Labels, Counter>,
    /// Tasks of the current leadership term running now, by task.
    pub leader_tasks: Family<Labels, Gauge>,
    /// 1 while this replica is the leader and acts, else 0.
    pub leader: Gauge,
    /// Seconds from message receipt to the Node's taint.
    pub receipt_to_taint: Histogram,
    /// Seconds from message receipt to a surged workload's replacement Ready.
    pub receipt_to_replacement_ready: Histogram,
    /// Events dropped because they came from another account or region, by reason.
    pub foreign_events: Family<Labels, Counter>,
    /// Pods of spotkube's scheduler left unscheduled longer than the threshold.
    pub unscheduled_pods: Gauge,
    /// Writes of the `spotkube.io/enabled` Namespace label, by label value and outcome.
    pub namespace_label_writes: Family<Labels, Counter>,
    /// Notifications by sink and outcome (sent, failed, duplicate, rate_limited, dropped).
    pub notifications: Family<Labels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            events: Family::default(),
            actions: Family::default(),
            leader_tasks: Family::default(),
            leader: Gauge::default(),
            receipt_to_taint: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            receipt_to_replacement_ready: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
            foreign_events: Family::default(),
            unscheduled_pods: Gauge::default(),
            namespace_label_writes: Family::default(),
            notifications: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("spotkube_controller");
        registry.register(
            "events",
            "EventBridge messages received, by kind",
            metrics.events.clone(),
        );
        registry.register(
            "actions",
            "Actions carried out, by action, outcome and error category (none when ok)",
            metrics.actions.clone(),
        );
        registry.register(
            "leader_tasks",
            "Tasks of the current leadership term running now, by task",
            metrics.leader_tasks.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader and acts (its Lease renewed within the renew deadline)",
            metrics.leader.clone(),
        );
        registry.register(
            "receipt_to_taint_seconds",
            "Time from message receipt to the Node's taint",
            metrics.receipt_to_taint.clone(),
        );
        registry.register(
            "receipt_to_replacement_ready_seconds",
            "Time from message receipt to a surged workload's replacement being Ready",
            metrics.receipt_to_replacement_ready.clone(),
        );
        registry.register(
            "foreign_events",
            "Events dropped because they came from another AWS account or region, by reason",
            metrics.foreign_events.clone(),
        );
        registry.register(
            "unscheduled_pods",
            "Pods of spotkube's scheduler that it has not picked up for longer than --unscheduled-after",
            metrics.unscheduled_pods.clone(),
        );
        registry.register(
            "namespace_label_writes",
            "Writes of the spotkube.io/enabled Namespace label (mirrored from its annotation), by label value (true, false, absent) and outcome",
            metrics.namespace_label_writes.clone(),
        );
        registry.register(
            "notifications",
            "Notifications by sink (slack, webhook) and outcome (sent, failed, duplicate, rate_limited, dropped)",
            metrics.notifications.clone(),
        );
        metrics
    }

    pub fn event(&self, kind: &str) {
        self.events
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// Counts an event dropped for coming from elsewhere; `reason` is `account` or `region`.
    pub fn foreign_event(&self, reason: &str) {
        self.foreign_events
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Counts an action's outcome; `error` is an [`crate::Error::category`] or `none`.
    pub fn action(&self, action: &str, outcome: &str, error: &str) {
        self.actions
            .get_or_create(&vec![
                ("action", action.to_string()),
                ("outcome", outcome.to_string()),
                ("error", error.to_string()),
            ])
            .inc();
    }

    /// Counts an action by its result.
    pub fn action_result<T>(&self, action: &str, result: &crate::Result<T>) {
        match result {
            Ok(_) => self.action(action, "ok", "none"),
            Err(error) => self.action(action, "error", error.category()),
        }
    }

    /// Counts a write of the opt-in label; `label` is `true`, `false` or `absent` (removed).
    pub fn namespace_label_write<T>(&self, label: &str, result: &crate::Result<T>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.namespace_label_writes
            .get_or_create(&vec![
                ("label", label.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// The gauge of running leader tasks named `task`.
    pub fn leader_task(&self, task: &str) -> Gauge {
        self.leader_tasks
            .get_or_create(&vec![("task", task.to_string())])
            .clone()
    }

    /// Counts a notification's fate at one sink.
    pub fn notification(&self, sink: &str, outcome: &str) {
        self.notifications
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }
}
