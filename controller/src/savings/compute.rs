//! The pure savings computation: nodes, opted-in pods and a price table in; per-workload
//! rows, cluster totals and the share of pods on a top-ranked spot type out. No I/O.
//!
//! A pod on an EC2 node costs its share of the node's hourly price, the share being its
//! CPU request over the node's allocatable CPU; its on-demand equivalent is the same
//! share of the on-demand price of the same instance type. A Fargate pod costs its
//! requests at Fargate's vCPU-hour and GB-hour rates, and its on-demand equivalent is
//! that same cost (Fargate is on-demand priced: it saves nothing). A pod whose price or
//! on-demand equivalent is not known is counted as unpriced and left out of both sums,
//! so a savings percentage always compares like with like.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use spotkube_shared::node::CapacityType;

/// What the computation needs of a Node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub capacity: CapacityType,
    /// Allocatable CPU in cores (0 when the Node does not say).
    pub cpu: f64,
}

/// A workload: the object that owns a pod's lifecycle (Deployment, StatefulSet, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadId {
    pub namespace: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet`, `Pod` (no owner), ...
    pub kind: String,
    pub name: String,
}

impl WorkloadId {
    /// `deployment/web`: kubectl's notation, unambiguous within a namespace.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }
}

/// What the computation needs of a running, opted-in Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts {
    pub workload: WorkloadId,
    pub node: String,
    /// Effective CPU request in cores.
    pub cpu: f64,
    /// Effective memory request in GiB.
    pub memory_gib: f64,
    /// Whether spotkube places the pod (false for DaemonSet and static pods: their node
    /// is chosen for them), for the top-ranked share.
    pub placeable: bool,
}

/// Fargate's Linux/x86 on-demand rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FargateRates {
    pub vcpu_hour: f64,
    pub gb_hour: f64,
}

/// The smallest Fargate pod: AWS bills at least 0.25 vCPU and 0.5 GB.
pub const FARGATE_MIN_VCPU: f64 = 0.25;
pub const FARGATE_MIN_GB: f64 = 0.5;

/// Every price the computation may use. A missing entry means "unknown": never guessed.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    /// AZ → instance type → spot $/hour.
    pub spot: BTreeMap<String, BTreeMap<String, f64>>,
    /// Instance type → on-demand $/hour.
    pub on_demand: BTreeMap<String, f64>,
    pub fargate: FargateRates,
    /// AZ → instance type → rank in the published ranking (1 = best).
    pub ranks: BTreeMap<String, BTreeMap<String, u32>>,
}

impl PriceTable {
    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64> {
        positive(*self.spot.get(zone)?.get(instance_type)?)
    }

    fn on_demand(&self, instance_type: &str) -> Option<f64> {
        positive(*self.on_demand.get(instance_type)?)
    }

    fn rank(&self, zone: &str, instance_type: &str) -> Option<u32> {
        self.ranks.get(zone)?.get(instance_type).copied()
    }
}

fn positive(price: f64) -> Option<f64> {
    (price.is_finite() && price > 0.0).then_some(price)
}

/// Where a pod runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Placement {
    /// A spot node; `rank` of its type in its AZ, `None` when not ranked there.
    Spot {
        rank: Option<u32>,
    },
    OnDemand,
    Fargate,
    /// The node's capacity type is unknown, or the node is not known.
    Unknown,
}

impl Placement {
    /// Ranked spot first (by rank), then unranked spot, on-demand, Fargate, unknown.
    fn order(self) -> (u8, u32) {
        match self {
            Placement::Spot { rank: Some(r) } => (0, r),
            Placement::Spot { rank: None } => (1, 0),
            Placement::OnDemand => (2, 0),
            Placement::Fargate => (3, 0),
            Placement::Unknown => (4, 0),
        }
    }

    /// The capacity a cost is counted under (`spot`, `on-demand`, `fargate`).
    fn capacity(self) -> Option<&'static str> {
        match self {
            Placement::Spot { .. } => Some(CapacityType::Spot.as_str()),
            Placement::OnDemand => Some(CapacityType::OnDemand.as_str()),
            Placement::Fargate => Some(CapacityType::Fargate.as_str()),
            Placement::Unknown => None,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Spot { rank: Some(r) } => write!(f, "spot-rank-{r}"),
            Placement::Spot { rank: None } => f.write_str("spot-unranked"),
            Placement::OnDemand => f.write_str("on-demand"),
            Placement::Fargate => f.write_str("fargate"),
            Placement::Unknown => f.write_str("unknown"),
        }
    }
}

/// How many of a workload's pods run in one kind of place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlacedPods {
    pub placement: String,
    pub pods: u32,
}

/// One workload's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadRow {
    pub namespace: String,
    /// `kind/name`, lower-case kind (`deployment/web`).
    pub workload: String,
    pub pods: u32,
    /// Pods left out of the dollar figures: their price or on-demand equivalent is unknown.
    pub pods_unpriced: u32,
    /// Where the pods run, ranked spot first.
    pub placement: Vec<PlacedPods>,
    /// $/hour by capacity (`spot`, `on-demand`, `fargate`) of the priced pods.
    pub cost_usd_per_hour: BTreeMap<String, f64>,
    /// The sum of `cost_usd_per_hour`.
    pub total_usd_per_hour: f64,
    /// What the priced pods would cost on on-demand capacity of the same instance types.
    pub on_demand_equivalent_usd_per_hour: f64,
    /// `(1 − total / on-demand equivalent) × 100`; `None` when nothing is priced.
    pub savings_percent: Option<f64>,
}

/// The sums over every opted-in workload.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Totals {
    pub workloads: usize,
    pub pods: u32,
    pub pods_unpriced: u32,
    pub cost_usd_per_hour: BTreeMap<String, f64>,
    pub total_usd_per_hour: f64,
    pub on_demand_equivalent_usd_per_hour: f64,
    pub savings_percent: Option<f64>,
    /// Opted-in pods spotkube places (not DaemonSet or static pods), by placement.
    pub placeable_pods: BTreeMap<String, u32>,
    /// The share of those on a rank-1 spot type of their AZ; `None` without any.
    pub on_top_ranked_ratio: Option<f64>,
}

/// The whole outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Report {
    /// Sorted by namespace, then workload.
    pub workloads: Vec<WorkloadRow>,
    pub totals: Totals,
}

/// One pod's price: its placement and, when known, (capacity, cost, on-demand equivalent).
pub fn price_pod(
    pod: &PodFacts,
    node: Option<&NodeFacts>,
    prices: &PriceTable,
) -> (Placement, Option<(&'static str, f64, f64)>) {
    let Some(node) = node else {
        return (Placement::Unknown, None);
    };
    let zone = node.zone.as_deref().unwrap_or_default();
    let instance_type = node.instance_type.as_deref().unwrap_or_default();
    let share = (node.cpu > 0.0).then(|| pod.cpu / node.cpu);
    let placement = match node.capacity {
        CapacityType::Spot => Placement::Spot {
            rank: prices.rank(zone, instance_type),
        },
        CapacityType::OnDemand => Placement::OnDemand,
        CapacityType::Fargate => Placement::Fargate,
        CapacityType::Unknown => Placement::Unknown,
    };
    let priced = match placement {
        Placement::Spot { .. } => share.and_then(|share| {
            let spot = prices.spot(zone, instance_type)?;
            let on_demand = prices.on_demand(instance_type)?;
            Some((share * spot, share * on_demand))
        }),
        Placement::OnDemand => share.and_then(|share| {
            let on_demand = prices.on_demand(instance_type)?;
            Some((share * on_demand, share * on_demand))
        }),
        Placement::Fargate => {
            let rates = prices.fargate;
            let cost = pod.cpu.max(FARGATE_MIN_VCPU) * rates.vcpu_hour
                + pod.memory_gib.max(FARGATE_MIN_GB) * rates.gb_hour;
            positive(cost).map(|cost| (cost, cost))
        }
        Placement::Unknown => None,
    };
    let capacity = placement.capacity();
    (
        placement,
        priced.and_then(|(cost, od)| Some((capacity?, cost, od))),
    )
}

#[derive(Default)]
struct Acc {
    pods: u32,
    unpriced: u32,
    placement: BTreeMap<Placement, u32>,
    cost: BTreeMap<String, f64>,
    on_demand: f64,
}

fn savings(total: f64, on_demand: f64) -> Option<f64> {
    (on_demand > 0.0).then(|| (1.0 - total / on_demand) * 100.0)
}

/// Computes the report for `pods` (opted-in ones only) on `nodes` at `prices`.
pub fn compute(nodes: &[NodeFacts], pods: &[PodFacts], prices: &PriceTable) -> Report {
    let nodes: BTreeMap<&str, &NodeFacts> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut by_workload: BTreeMap<&WorkloadId, Acc> = BTreeMap::new();
    let mut totals = Totals::default();
    let mut placeable = 0u32;
    let mut on_top = 0u32;
    for pod in pods {
        let (placement, priced) = price_pod(pod, nodes.get(pod.node.as_str()).copied(), prices);
        let acc = by_workload.entry(&pod.workload).or_default();
        acc.pods += 1;
        *acc.placement.entry(placement).or_default() += 1;
        match priced {
            Some((capacity, cost, od)) => {
                *acc.cost.entry(capacity.to_string()).or_default() += cost;
                acc.on_demand += od;
            }
            None => acc.unpriced += 1,
        }
        if pod.placeable {
            placeable += 1;
            on_top += u32::from(placement == Placement::Spot { rank: Some(1) });
            *totals
                .placeable_pods
                .entry(placement.to_string())
                .or_default() += 1;
        }
    }
    let mut workloads = Vec::with_capacity(by_workload.len());
    for (id, acc) in by_workload {
        let total: f64 = acc.cost.values().sum();
        let mut placement: Vec<(Placement, u32)> = acc.placement.into_iter().collect();
        placement.sort_by_key(|(p, _)| p.order());
        totals.pods += acc.pods;
        totals.pods_unpriced += acc.unpriced;
        for (capacity, cost) in &acc.cost {
            *totals
                .cost_usd_per_hour
                .entry(capacity.clone())
                .or_default() += cost;
        }
        totals.on_demand_equivalent_usd_per_hour += acc.on_demand;
        workloads.push(WorkloadRow {
            namespace: id.namespace.clone(),
            workload: id.label(),
            pods: acc.pods,
            pods_unpriced: acc.unpriced,
            placement: placement
                .into_iter()
                .map(|(p, pods)| PlacedPods {
                    placement: p.to_string(),
                    pods,
                })
                .collect(),
            cost_usd_per_hour: acc.cost,
            total_usd_per_hour: total,
            on_demand_equivalent_usd_per_hour: acc.on_demand,
            savings_percent: savings(total, acc.on_demand),
        });
    }
    totals.workloads = workloads.len();
    totals.total_usd_per_hour = totals.cost_usd_per_hour.values().sum();
    totals.savings_percent = savings(
        totals.total_usd_per_hour,
        totals.on_demand_equivalent_usd_per_hour,
    );
    totals.on_top_ranked_ratio = (placeable > 0).then(|| f64::from(on_top) / f64::from(placeable));
    Report { workloads, totals }
}

/// The spot node types (zone, type) of `nodes` that `prices` has no spot price for:
/// what to ask the price source about.
pub fn missing_spot_prices(nodes: &[NodeFacts], prices: &PriceTable) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| n.capacity == CapacityType::Spot)
        .filter_map(|n| {
            let (zone, instance_type) = (n.zone.as_deref()?, n.instance_type.as_deref()?);
            prices
                .spot(zone, instance_type)
                .is_none()
                .then(|| instance_type.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    fn node(name: &str, zone: &str, t: &str, capacity: CapacityType, cpu: f64) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            zone: Some(zone.into()),
            instance_type: Some(t.into()),
            capacity,
            cpu,
        }
    }

    fn pod(ns: &str, kind: &str, name: &str, node: &str, cpu: f64, memory_gib: f64) -> PodFacts {
        PodFacts {
            workload: WorkloadId {
                namespace: ns.into(),
                kind: kind.into(),
                name: name.into(),
            },
            node: node.into(),
            cpu,
            memory_gib,
            placeable: true,
        }
    }

    fn prices() -> PriceTable {
        PriceTable {
            spot: BTreeMap::from([
                (
                    "z-a".to_string(),
                    BTreeMap::from([
                        ("c7g.4xlarge".to_string(), 0.16),
                        ("m7g.large".into(), 0.03),
                    ]),
                ),
                (
                    "z-b".to_string(),
                    BTreeMap::from([("c7g.4xlarge".to_string(), 0.2)]),
                ),
            ]),
            on_demand: BTreeMap::from([
                ("c7g.4xlarge".to_string(), 0.58),
                ("m7g.large".to_string(), 0.0816),
            ]),
            fargate: FargateRates {
                vcpu_hour: 0.04048,
                gb_hour: 0.004445,
            },
            ranks: BTreeMap::from([(
                "z-a".to_string(),
                BTreeMap::from([("c7g.4xlarge".to_string(), 1), ("m7g.large".to_string(), 2)]),
            )]),
        }
    }

    fn row<'a>(report: &'a Report, workload: &str) -> &'a WorkloadRow {
        report
            .workloads
            .iter()
            .find(|r| r.workload == workload)
            .unwrap_or_else(|| panic!("no {workload} in {report:#?}"))
    }

    #[test]
    fn a_spot_pod_costs_its_cpu_share_of_the_spot_price() {
        let nodes = [node("n1", "z-a", "c7g.4xlarge", CapacityType::Spot, 16.0)];
        let pods = [
            pod("shop", "Deployment", "web", "n1", 2.0, 1.0),
            pod("shop", "Deployment", "web", "n1", 2.0, 1.0),
        ];
        let report = compute(&nodes, &pods, &prices());
        let web = row(&report, "deployment/web");
        assert_eq!((web.pods, web.pods_unpriced), (2, 0));
        // 2 × (2 / 16) × 0.16 and 2 × (2 / 16) × 0.58.
        assert!((web.cost_usd_per_hour["spot"] - 0.04).abs() < EPS);
        assert!((web.total_usd_per_hour - 0.04).abs() < EPS);
        assert!((web.on_demand_equivalent_usd_per_hour - 0.145).abs() < EPS);
        let savings = web.savings_percent.unwrap();
        assert!(
            (savings - (1.0 - 0.16 / 0.58) * 100.0).abs() < 1e-9,
            "{savings}"
        );
        assert_eq!(
            web.placement,
            [PlacedPods {
                placement: "spot-rank-1".into(),
                pods: 2
            }]
        );
        assert_eq!(report.totals.on_top_ranked_ratio, Some(1.0));
    }

    #[test]
    fn mixed_capacity_sums_per_capacity_and_ranks_spot_first() {
        let nodes = [
            node("spot-a", "z-a", "m7g.large", CapacityType::Spot, 2.0),
            node("spot-b", "z-b", "c7g.4xlarge", CapacityType::Spot, 16.0),
            node("od", "z-a", "m7g.large", CapacityType::OnDemand, 2.0),
        ];
        let pods = [
            pod("shop", "Deployment", "api", "od", 1.0, 1.0),
            pod("shop", "Deployment", "api", "spot-b", 4.0, 1.0),
            pod("shop", "Deployment", "api", "spot-a", 0.5, 1.0),
        ];
        let report = compute(&nodes, &pods, &prices());
        let api = row(&report, "deployment/api");
        let spot = 0.5 / 2.0 * 0.03 + 4.0 / 16.0 * 0.2;
        let on_demand = 1.0 / 2.0 * 0.0816;
        assert!((api.cost_usd_per_hour["spot"] - spot).abs() < EPS);
        assert!((api.cost_usd_per_hour["on-demand"] - on_demand).abs() < EPS);
        assert!((api.total_usd_per_hour - (spot + on_demand)).abs() < EPS);
        let equivalent = 0.5 / 2.0 * 0.0816 + 4.0 / 16.0 * 0.58 + on_demand;
        assert!((api.on_demand_equivalent_usd_per_hour - equivalent).abs() < EPS);
        let places: Vec<(&str, u32)> = api
            .placement
            .iter()
            .map(|p| (p.placement.as_str(), p.pods))
            .collect();
        // c7g.4xlarge is not ranked in z-b.
        assert_eq!(
            places,
            [("spot-rank-2", 1), ("spot-unranked", 1), ("on-demand", 1)]
        );
        assert_eq!(report.totals.on_top_ranked_ratio, Some(0.0));
        assert_eq!(report.totals.placeable_pods["on-demand"], 1);
    }

    #[test]
    fn fargate_pods_cost_their_requests_and_save_nothing() {
        let nodes = [node("fg", "z-a", "", CapacityType::Fargate, 2.0)];
        let pods = [
            pod("batch", "Job", "etl", "fg", 1.0, 2.0),
            // Below Fargate's smallest size: billed as 0.25 vCPU, 0.5 GB.
            pod("batch", "Deployment", "tiny", "fg", 0.0, 0.1),
        ];
        let report = compute(&nodes, &pods, &prices());
        let etl = row(&report, "job/etl");
        let want = 0.04048 + 2.0 * 0.004445;
        assert!((etl.cost_usd_per_hour["fargate"] - want).abs() < EPS);
        assert!((etl.on_demand_equivalent_usd_per_hour - want).abs() < EPS);
        assert!(etl.savings_percent.unwrap().abs() < 1e-9);
        let tiny = row(&report, "deployment/tiny");
        assert!((tiny.total_usd_per_hour - (0.25 * 0.04048 + 0.5 * 0.004445)).abs() < EPS);
        assert_eq!(report.totals.placeable_pods["fargate"], 2);
    }

    #[test]
    fn unknown_prices_are_counted_never_guessed() {
        let nodes = [
            // No spot price for this type in z-a.
            node("spot", "z-a", "t4g.large", CapacityType::Spot, 2.0),
            // Spot price known in z-b but no on-demand price for the type.
            node("nood", "z-b", "x9.large", CapacityType::Spot, 2.0),
            node("what", "z-a", "m7g.large", CapacityType::Unknown, 2.0),
            node("nocpu", "z-a", "m7g.large", CapacityType::OnDemand, 0.0),
            node("ok", "z-a", "m7g.large", CapacityType::OnDemand, 2.0),
        ];
        let mut prices = prices();
        prices
            .spot
            .get_mut("z-b")
            .unwrap()
            .insert("x9.large".into(), 0.01);
        let pods = [
            pod("ns", "StatefulSet", "db", "spot", 1.0, 1.0),
            pod("ns", "StatefulSet", "db", "nood", 1.0, 1.0),
            pod("ns", "StatefulSet", "db", "what", 1.0, 1.0),
            pod("ns", "StatefulSet", "db", "nocpu", 1.0, 1.0),
            pod("ns", "StatefulSet", "db", "gone-node", 1.0, 1.0),
            pod("ns", "StatefulSet", "db", "ok", 1.0, 1.0),
        ];
        let report = compute(&nodes, &pods, &prices);
        let db = row(&report, "statefulset/db");
        assert_eq!((db.pods, db.pods_unpriced), (6, 5));
        // Only the one priced pod is in either sum.
        assert!((db.total_usd_per_hour - 0.0408).abs() < EPS);
        assert!((db.on_demand_equivalent_usd_per_hour - 0.0408).abs() < EPS);
        assert_eq!(db.cost_usd_per_hour.len(), 1);
        assert_eq!(report.totals.pods_unpriced, 5);
        assert_eq!(report.totals.placeable_pods["unknown"], 2);
        assert_eq!(
            missing_spot_prices(&nodes, &prices),
            BTreeSet::from(["t4g.large".to_string()])
        );
    }

    #[test]
    fn totals_sum_the_workloads_and_the_ratio_counts_only_placeable_pods() {
        let nodes = [
            node("n1", "z-a", "c7g.4xlarge", CapacityType::Spot, 16.0),
            node("od", "z-a", "m7g.large", CapacityType::OnDemand, 2.0),
        ];
        let mut daemon = pod("a", "DaemonSet", "agent", "od", 0.2, 0.1);
        daemon.placeable = false;
        let pods = [
            pod("a", "Deployment", "web", "n1", 4.0, 1.0),
            pod("b", "Deployment", "web", "od", 1.0, 1.0),
            daemon,
        ];
        let report = compute(&nodes, &pods, &prices());
        let names: Vec<(&str, &str)> = report
            .workloads
            .iter()
            .map(|r| (r.namespace.as_str(), r.workload.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", "daemonset/agent"),
                ("a", "deployment/web"),
                ("b", "deployment/web")
            ]
        );
        let t = &report.totals;
        assert_eq!((t.workloads, t.pods, t.pods_unpriced), (3, 3, 0));
        let spot = 0.25 * 0.16;
        let od = 0.5 * 0.0816 + 0.1 * 0.0816;
        assert!((t.cost_usd_per_hour["spot"] - spot).abs() < EPS);
        assert!((t.cost_usd_per_hour["on-demand"] - od).abs() < EPS);
        assert!((t.total_usd_per_hour - (spot + od)).abs() < EPS);
        assert!((t.on_demand_equivalent_usd_per_hour - (0.25 * 0.58 + od)).abs() < EPS);
        // 1 of the 2 placeable pods is on rank 1; the DaemonSet pod does not count.
        assert_eq!(t.on_top_ranked_ratio, Some(0.5));
        assert_eq!(
            compute(&nodes, &[], &prices()).totals.on_top_ranked_ratio,
            None
        );
    }
}
