//! The controller's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::savings::compute::Report;

type Labels = Vec<(&'static str, String)>;
/// A gauge of dollars or ratios.
type FloatGauge = Gauge<f64, AtomicU64>;

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
    /// External disruption signals seen on Nodes, by source and kind.
    pub external_signals: Family<Labels, Counter>,
    /// Realised spot savings (the leader's savings loop).
    pub savings: SavingsMetrics,
    /// Failed SQS receives, by reason (`throttled`, `error`).
    pub sqs_receive_errors: Family<Labels, Counter>,
    /// 1 while the leader's last SQS receive failed (SQS unreachable or throttling),
    /// else 0 (a standby, which does not receive, reports 0).
    pub sqs_receive_failing: Gauge,
    /// 1 while the leader's last probe of `--extender-url` was answered, else 0.
    pub extender_up: Gauge,
    /// Pods of spotkube's scheduler bound while the extender did not answer.
    pub pods_scheduled_without_extender: Counter,
    /// Replacement capacity (the capacity loop).
    pub capacity: crate::capacity::metrics::CapacityMetrics,
    /// Fargate failover and recovery.
    pub fargate: crate::fargate::metrics::FargateMetrics,
}

/// `spotkube_controller_receipt_to_taint_seconds` bounds.
const RECEIPT_TO_TAINT_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            events: Family::default(),
            actions: Family::default(),
            leader_tasks: Family::default(),
            leader: Gauge::default(),
            // Bounds 0.25 s apart up to 1.5 s: the goal for a burst of warnings is every
            // taint within 1 s, which powers of two (0.64, 1.28) cannot show.
            receipt_to_taint: Histogram::new(RECEIPT_TO_TAINT_BUCKETS),
            receipt_to_replacement_ready: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
            foreign_events: Family::default(),
            unscheduled_pods: Gauge::default(),
            namespace_label_writes: Family::default(),
            notifications: Family::default(),
            external_signals: Family::default(),
            savings: SavingsMetrics::register(registry),
            sqs_receive_errors: Family::default(),
            sqs_receive_failing: Gauge::default(),
            extender_up: Gauge::default(),
            pods_scheduled_without_extender: Counter::default(),
            capacity: crate::capacity::metrics::CapacityMetrics::register(registry),
            fargate: crate::fargate::metrics::FargateMetrics::register(registry),
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
        registry.register(
            "external_signals",
            "External disruption signals seen on Nodes (another tool's taint, label or cordon), by source (nth, cluster-autoscaler, karpenter, unreachable, cordon) and kind (imminent, planned, rebalance)",
            metrics.external_signals.clone(),
        );
        registry.register(
            "sqs_receive_errors",
            "Failed SQS ReceiveMessage calls, by reason (throttled, error); the intake backs off after each",
            metrics.sqs_receive_errors.clone(),
        );
        registry.register(
            "sqs_receive_failing",
            "1 while the leader's last SQS receive failed (queue unreachable or throttled), else 0; /readyz reports it too",
            metrics.sqs_receive_failing.clone(),
        );
        registry.register(
            "extender_up",
            "1 while the leader's last probe of --extender-url was answered, else 0 (always 0 without the flag)",
            metrics.extender_up.clone(),
        );
        registry.register(
            "pods_scheduled_without_extender",
            "Pods of spotkube's scheduler bound while the extender did not answer: scheduled without its filter and prices (ignorable: true)",
            metrics.pods_scheduled_without_extender.clone(),
        );
        metrics
    }

    /// Records how a receive went: failures by reason, and whether it is failing now.
    pub fn sqs_receive(&self, failure: Option<&str>) {
        match failure {
            Some(reason) => {
                self.sqs_receive_errors
                    .get_or_create(&vec![("reason", reason.to_string())])
                    .inc();
                self.sqs_receive_failing.set(1);
            }
            None => {
                self.sqs_receive_failing.set(0);
            }
        }
    }

    /// Counts an external signal newly seen on a Node.
    pub fn external_signal(&self, source: &str, kind: &str) {
        self.external_signals
            .get_or_create(&vec![
                ("source", source.to_string()),
                ("kind", kind.to_string()),
            ])
            .inc();
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

/// The workload label of the series that sums the workloads beyond
/// `--savings-max-workloads` (its namespace label is the same).
pub const OTHER_WORKLOADS: &str = "(other)";

/// What opted-in workloads cost, exported by the leader's savings loop (a standby
/// exports none). Every figure is in US$ per hour; see README "Savings".
///
/// - `spotkube_workload_cost_usd_per_hour{namespace,workload,capacity}`: what a
///   workload's pods cost now, by capacity (`spot`, `on-demand`, `fargate`).
/// - `spotkube_workload_on_demand_equivalent_usd_per_hour{namespace,workload}`: what the
///   same pods would cost on on-demand capacity of the same instance types.
/// - `spotkube_cluster_cost_usd_per_hour{capacity}`,
///   `spotkube_cluster_on_demand_equivalent_usd_per_hour`: the sums over every opted-in
///   workload (beyond the cap too).
/// - `spotkube_opted_in_pods{placement}`: opted-in pods spotkube places (not DaemonSet or
///   static pods) by placement: `spot-rank-<r>`, `spot-unranked`, `on-demand`,
///   `fargate`, `unknown`.
/// - `spotkube_opted_in_pods_on_top_ranked_ratio`: the share of those on a rank-1 spot
///   type of their AZ: the outcome the ranking and the extender exist for.
/// - `spotkube_opted_in_pods_unpriced`: opted-in pods left out of every dollar figure
///   (their node's price or on-demand equivalent is unknown).
/// - `spotkube_savings_workloads_folded`: workloads beyond the cap, summed into the
///   `workload="(other)"` series.
/// - `spotkube_savings_last_computed_timestamp_seconds`: when the figures were computed.
#[derive(Clone)]
pub struct SavingsMetrics {
    pub workload_cost: Family<Labels, FloatGauge>,
    pub workload_on_demand: Family<Labels, FloatGauge>,
    pub cluster_cost: Family<Labels, FloatGauge>,
    pub cluster_on_demand: FloatGauge,
    pub placed_pods: Family<Labels, Gauge>,
    pub on_top_ranked_ratio: FloatGauge,
    pub unpriced_pods: Gauge,
    pub folded: Gauge,
    pub last_computed: Gauge,
    /// The label sets set last time, per family: those gone now are removed.
    previous: Arc<Mutex<[BTreeSet<Labels>; 4]>>,
}

impl SavingsMetrics {
    fn register(registry: &mut Registry) -> SavingsMetrics {
        let m = SavingsMetrics {
            workload_cost: Family::default(),
            workload_on_demand: Family::default(),
            cluster_cost: Family::default(),
            cluster_on_demand: FloatGauge::default(),
            placed_pods: Family::default(),
            on_top_ranked_ratio: FloatGauge::default(),
            unpriced_pods: Gauge::default(),
            folded: Gauge::default(),
            last_computed: Gauge::default(),
            previous: Arc::default(),
        };
        let r = registry.sub_registry_with_prefix("spotkube");
        r.register(
            "workload_cost_usd_per_hour",
            "What an opted-in workload's pods cost now, US$ per hour, by capacity (their CPU-request share of each node's price; Fargate by requests)",
            m.workload_cost.clone(),
        );
        r.register(
            "workload_on_demand_equivalent_usd_per_hour",
            "What the same pods would cost on on-demand capacity of the same instance types, US$ per hour",
            m.workload_on_demand.clone(),
        );
        r.register(
            "cluster_cost_usd_per_hour",
            "What every opted-in workload costs now, US$ per hour, by capacity",
            m.cluster_cost.clone(),
        );
        r.register(
            "cluster_on_demand_equivalent_usd_per_hour",
            "What every opted-in workload would cost on on-demand capacity, US$ per hour",
            m.cluster_on_demand.clone(),
        );
        r.register(
            "opted_in_pods",
            "Opted-in pods spotkube places, by placement (spot-rank-<r>, spot-unranked, on-demand, fargate, unknown)",
            m.placed_pods.clone(),
        );
        r.register(
            "opted_in_pods_on_top_ranked_ratio",
            "Share of the opted-in pods spotkube places that run on a rank-1 spot type of their AZ",
            m.on_top_ranked_ratio.clone(),
        );
        r.register(
            "opted_in_pods_unpriced",
            "Opted-in pods left out of the cost figures: their price or on-demand equivalent is unknown",
            m.unpriced_pods.clone(),
        );
        r.register(
            "savings_workloads_folded",
            "Workloads beyond --savings-max-workloads, summed into the workload=\"(other)\" series",
            m.folded.clone(),
        );
        r.register(
            "savings_last_computed_timestamp_seconds",
            "Unix time the savings figures were last computed",
            m.last_computed.clone(),
        );
        m
    }

    /// Exports `report`: the `max_workloads` workloads with the largest on-demand
    /// equivalent get their own series, the rest are summed into `(other)`. Series of
    /// workloads gone since the last call are removed.
    pub fn publish(&self, report: &Report, max_workloads: usize, now: jiff::Timestamp) {
        let mut rows: Vec<_> = report.workloads.iter().collect();
        rows.sort_by(|a, b| {
            b.on_demand_equivalent_usd_per_hour
                .total_cmp(&a.on_demand_equivalent_usd_per_hour)
                .then_with(|| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)))
        });
        let folded = rows.split_off(rows.len().min(max_workloads));
        let mut cost: Vec<(Labels, f64)> = Vec::new();
        let mut on_demand: Vec<(Labels, f64)> = Vec::new();
        let workload =
            |ns: &str, w: &str| vec![("namespace", ns.to_string()), ("workload", w.to_string())];
        for row in &rows {
            for (capacity, usd) in &row.cost_usd_per_hour {
                let mut labels = workload(&row.namespace, &row.workload);
                labels.push(("capacity", capacity.clone()));
                cost.push((labels, *usd));
            }
            on_demand.push((
                workload(&row.namespace, &row.workload),
                row.on_demand_equivalent_usd_per_hour,
            ));
        }
        if !folded.is_empty() {
            let mut by_capacity = std::collections::BTreeMap::<&str, f64>::new();
            for row in &folded {
                for (capacity, usd) in &row.cost_usd_per_hour {
                    *by_capacity.entry(capacity).or_default() += usd;
                }
            }
            for (capacity, usd) in by_capacity {
                let mut labels = workload(OTHER_WORKLOADS, OTHER_WORKLOADS);
                labels.push(("capacity", capacity.to_string()));
                cost.push((labels, usd));
            }
            on_demand.push((
                workload(OTHER_WORKLOADS, OTHER_WORKLOADS),
                folded
                    .iter()
                    .map(|r| r.on_demand_equivalent_usd_per_hour)
                    .sum(),
            ));
        }
        let totals = &report.totals;
        let cluster: Vec<(Labels, f64)> = totals
            .cost_usd_per_hour
            .iter()
            .map(|(capacity, usd)| (vec![("capacity", capacity.clone())], *usd))
            .collect();
        let placed: Vec<(Labels, f64)> = totals
            .placeable_pods
            .iter()
            .map(|(placement, pods)| (vec![("placement", placement.clone())], f64::from(*pods)))
            .collect();
        let mut previous = self.previous.lock().expect("savings metrics lock");
        set_all(&self.workload_cost, cost, &mut previous[0]);
        set_all(&self.workload_on_demand, on_demand, &mut previous[1]);
        set_all(&self.cluster_cost, cluster, &mut previous[2]);
        let mut placed_now = BTreeSet::new();
        for (labels, pods) in placed {
            self.placed_pods.get_or_create(&labels).set(pods as i64);
            placed_now.insert(labels);
        }
        for gone in previous[3].difference(&placed_now) {
            self.placed_pods.remove(gone);
        }
        previous[3] = placed_now;
        self.cluster_on_demand
            .set(totals.on_demand_equivalent_usd_per_hour);
        self.on_top_ranked_ratio
            .set(totals.on_top_ranked_ratio.unwrap_or(0.0));
        self.unpriced_pods.set(i64::from(totals.pods_unpriced));
        self.folded.set(folded.len() as i64);
        self.last_computed.set(now.as_second());
    }

    /// Removes every figure: a former leader no longer knows them.
    pub fn clear(&self) {
        let mut previous = self.previous.lock().expect("savings metrics lock");
        self.workload_cost.clear();
        self.workload_on_demand.clear();
        self.cluster_cost.clear();
        self.placed_pods.clear();
        *previous = Default::default();
        self.cluster_on_demand.set(0.0);
        self.on_top_ranked_ratio.set(0.0);
        self.unpriced_pods.set(0);
        self.folded.set(0);
        self.last_computed.set(0);
    }
}

/// Sets each series to its value, then removes the series set before but not now.
fn set_all(
    family: &Family<Labels, FloatGauge>,
    values: Vec<(Labels, f64)>,
    previous: &mut BTreeSet<Labels>,
) {
    let mut now = BTreeSet::new();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
        now.insert(labels);
    }
    for gone in previous.difference(&now) {
        family.remove(gone);
    }
    *previous = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::savings::compute::{Totals, WorkloadRow};
    use std::collections::BTreeMap;

    fn row(ns: &str, workload: &str, spot: f64, on_demand: f64) -> WorkloadRow {
        WorkloadRow {
            namespace: ns.into(),
            workload: workload.into(),
            pods: 1,
            pods_unpriced: 0,
            placement: vec![],
            cost_usd_per_hour: BTreeMap::from([("spot".into(), spot)]),
            total_usd_per_hour: spot,
            on_demand_equivalent_usd_per_hour: on_demand,
            savings_percent: None,
        }
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn savings_are_capped_folded_and_forgotten_when_gone() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let report = Report {
            workloads: vec![
                row("a", "deployment/small", 0.01, 0.02),
                row("a", "deployment/big", 0.1, 0.4),
                row("b", "statefulset/mid", 0.05, 0.1),
            ],
            totals: Totals {
                cost_usd_per_hour: BTreeMap::from([("spot".into(), 0.16)]),
                on_demand_equivalent_usd_per_hour: 0.52,
                placeable_pods: BTreeMap::from([("spot-rank-1".into(), 3)]),
                on_top_ranked_ratio: Some(1.0),
                ..Totals::default()
            },
        };
        metrics
            .savings
            .publish(&report, 2, jiff::Timestamp::from_second(1000).unwrap());
        let text = scrape(&registry);
        for line in [
            r#"spotkube_workload_cost_usd_per_hour{namespace="a",workload="deployment/big",capacity="spot"} 0.1"#,
            r#"spotkube_workload_on_demand_equivalent_usd_per_hour{namespace="b",workload="statefulset/mid"} 0.1"#,
            r#"spotkube_workload_cost_usd_per_hour{namespace="(other)",workload="(other)",capacity="spot"} 0.01"#,
            r#"spotkube_workload_on_demand_equivalent_usd_per_hour{namespace="(other)",workload="(other)"} 0.02"#,
            r#"spotkube_cluster_cost_usd_per_hour{capacity="spot"} 0.16"#,
            "spotkube_cluster_on_demand_equivalent_usd_per_hour 0.52",
            r#"spotkube_opted_in_pods{placement="spot-rank-1"} 3"#,
            "spotkube_opted_in_pods_on_top_ranked_ratio 1.0",
            "spotkube_savings_workloads_folded 1",
            "spotkube_savings_last_computed_timestamp_seconds 1000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("deployment/small"), "folded: {text}");

        // `big` is gone: its series go, nothing is folded any more.
        let mut later = report.clone();
        later.workloads.remove(1);
        later.totals.placeable_pods.clear();
        metrics
            .savings
            .publish(&later, 2, jiff::Timestamp::from_second(1060).unwrap());
        let text = scrape(&registry);
        assert!(!text.contains("deployment/big"), "{text}");
        assert!(!text.contains(r#"namespace="(other)""#), "{text}");
        assert!(!text.contains("spotkube_opted_in_pods{"), "{text}");
        assert!(text.contains(r#"workload="deployment/small""#), "{text}");

        metrics.savings.clear();
        let text = scrape(&registry);
        assert!(
            !text.contains("spotkube_workload_cost_usd_per_hour{"),
            "{text}"
        );
    }
}
