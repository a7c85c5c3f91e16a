//! The pending-pods loop: an opted-in pod the scheduler left `Unschedulable` for longer
//! than `--pending-after` gets one Warning Event quoting the scheduler's message, and
//! counts in `spotkube_controller_pending_pods` and, by the scheduler's reason, in
//! `spotkube_controller_unschedulable_pods_total`.
//!
//! With scale-up on (`--scale-up-pending`; `auto` = on unless Karpenter or Cluster
//! Autoscaler is found, re-checked every 5 minutes), a pod whose required node labels
//! match only Ready Nodes of one pool has that pool's spot group raised by one, through
//! the same action as a replacement ([`asg::request_above`], never above MaxSize). One
//! request per pool is in flight at a time (in memory).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroupList;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use spotkube_shared::admin::Readiness;
use spotkube_shared::node::NodeIdentity;
use tokio_util::sync::CancellationToken;

use super::unscheduled::{PodIndex, Reported, Tracked, next_tick, poll_every, waited, watch_pods};
use crate::capacity::asg::{self, Request};
use crate::capacity::metrics::labels;
use crate::capacity::pools::{self, DiscoveryConfig, Group, Pools};
use crate::context::Context;
use crate::error::{KubeResultExt, Result};
use crate::reconcile::namespace_labels::LABEL;
use crate::savings::inputs::{opted_in, pod_enabled};

/// The Warning Event on a pod Unschedulable beyond the threshold.
pub const REASON: &str = "SpotkubePodUnschedulable";
/// The Normal Event on each pod whose pool was raised for it.
pub const SCALE_UP: &str = "SpotkubePendingScaleUp";
/// The Warning Event on pods whose pool's spot group is at its MaxSize (the capacity
/// loop's reason for the same fact).
pub const CAPPED: &str = "SpotkubeCapacityCapped";
/// Pending, unbound pods: the API server filters.
pub const FIELD_SELECTOR: &str = "status.phase=Pending,spec.nodeName=";
/// How long an autoscaler detection holds in `auto`.
pub const DETECT_EVERY: Duration = Duration::from_secs(300);
/// `app.kubernetes.io/name` values of Cluster Autoscaler's Deployment (its manifests,
/// and its Helm chart on AWS).
const CLUSTER_AUTOSCALER_NAMES: &[&str] = &["cluster-autoscaler", "aws-cluster-autoscaler"];

/// `--scale-up-pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaleUp {
    /// On unless Karpenter or Cluster Autoscaler is detected.
    Auto,
    On,
    Off,
}

/// Node labels a pod requires: each key must carry one of its values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements(pub BTreeMap<String, BTreeSet<String>>);

impl Requirements {
    /// From `spec.nodeSelector` and the required node affinity; `None` when the affinity
    /// is more than one term of `In` expressions (the pool is then not resolved).
    pub fn of(spec: &PodSpec) -> Option<Requirements> {
        let mut out = Requirements::default();
        for (key, value) in spec.node_selector.iter().flatten() {
            out.add(key, BTreeSet::from([value.clone()]));
        }
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        if let Some(required) = required {
            // Terms are ORed: more than one could mean more than one pool.
            let [term] = required.node_selector_terms.as_slice() else {
                return None;
            };
            if term.match_fields.as_ref().is_some_and(|f| !f.is_empty()) {
                return None;
            }
            for e in term.match_expressions.iter().flatten() {
                if e.operator != "In" {
                    return None;
                }
                out.add(&e.key, e.values.iter().flatten().cloned().collect());
            }
        }
        Some(out)
    }

    fn add(&mut self, key: &str, values: BTreeSet<String>) {
        match self.0.get_mut(key) {
            Some(have) => have.retain(|v| values.contains(v)),
            None => {
                self.0.insert(key.to_string(), values);
            }
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|(key, values)| labels.get(key).is_some_and(|v| values.contains(v)))
    }
}

/// An opted-in candidate: a Pending pod the scheduler found no node for.
#[derive(Debug, Clone, PartialEq)]
pub struct Unschedulable {
    pub uid: String,
    /// When `PodScheduled` turned False (else the pod's creation).
    pub since: Timestamp,
    pub reference: ObjectReference,
    pub namespace: String,
    /// The scheduler's condition message.
    pub message: String,
    /// The pod's own `spotkube.io/enabled`.
    pub enabled: Option<bool>,
    pub requires: Option<Requirements>,
}

impl Tracked for Unschedulable {
    fn read(pod: &Pod) -> Option<Unschedulable> {
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref()?;
        if pod.metadata.deletion_timestamp.is_some()
            || spec.node_name.is_some()
            || status.phase.as_deref() != Some("Pending")
        {
            return None;
        }
        let condition = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled")?;
        if condition.status != "False" || condition.reason.as_deref() != Some("Unschedulable") {
            return None;
        }
        let since = condition
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| pod.creation_timestamp().map(|t| t.0))?;
        Some(Unschedulable {
            uid: pod.uid()?,
            since,
            reference: pod.object_ref(&()),
            namespace: pod.namespace()?,
            message: condition.message.clone().unwrap_or_default(),
            enabled: pod_enabled(pod),
            requires: Requirements::of(spec),
        })
    }

    fn uid(&self) -> &str {
        &self.uid
    }

    fn since(&self) -> Timestamp {
        self.since
    }
}

/// The reasons in a scheduler message ("0/3 nodes are available: 1 Insufficient cpu,
/// 2 node(s) had untolerated taint {k: v}. preemption: ..."), without counts and taint
/// details so that the metric's label stays bounded; `other` when there are none.
pub fn reasons(message: &str) -> Vec<String> {
    let list = message
        .split_once("are available: ")
        .map(|(_, rest)| rest.split(". ").next().unwrap_or(rest));
    let mut out: Vec<String> = list
        .into_iter()
        .flat_map(|l| l.split(", "))
        .map(|item| {
            let item = item.trim_start_matches(|c: char| c.is_ascii_digit()).trim();
            let item = item.split(" {").next().unwrap_or(item);
            item.trim_end_matches('.').trim().to_string()
        })
        .filter(|r| !r.is_empty())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if out.is_empty() {
        out.push("other".into());
    }
    out
}

/// What pool resolution knows of a Node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    /// The pool of its instance (`None`: no pool, e.g. Karpenter's).
    pub pool: Option<String>,
}

/// The pool whose Nodes can take a pod requiring `requires`: every Ready Node matching
/// is of that one pool. `None` when none matches, one is of no pool, or two pools do.
pub fn pool_for<'a>(requires: &Requirements, nodes: &'a [NodeFacts]) -> Option<&'a str> {
    let mut pool = None;
    for node in nodes
        .iter()
        .filter(|n| n.ready && requires.matches(&n.labels))
    {
        let this = node.pool.as_deref()?;
        match pool {
            None => pool = Some(this),
            Some(p) if p == this => {}
            Some(_) => return None,
        }
    }
    pool
}

/// A pool's scale-up in flight.
#[derive(Debug, Clone, PartialEq)]
struct Asked {
    group: String,
    at: Timestamp,
    /// The desired capacity set.
    to: i32,
    /// When the group had `to` InService with their Nodes Ready.
    delivered: Option<Timestamp>,
}

/// At most one scale-up per pool at a time, in memory (a new leader may ask once more).
#[derive(Debug, Default)]
pub struct InFlight(HashMap<String, Asked>);

impl InFlight {
    /// Whether `pool` may be asked again at `now`: nothing in flight, or the wait is
    /// over. A request is over `timeout` after it was sent, or `settle` after the group
    /// had `to` InService with `ready` of its instances' Nodes Ready: the pods get that
    /// long to be scheduled onto the new Node before another is asked.
    pub fn may_ask(
        &mut self,
        pool: &str,
        group: &Group,
        ready: i32,
        now: Timestamp,
        timeout: Duration,
        settle: Duration,
    ) -> bool {
        let Some(asked) = self.0.get_mut(pool) else {
            return true;
        };
        if asked.delivered.is_none() && group.in_service >= asked.to && ready >= asked.to {
            asked.delivered = Some(now);
        }
        let over = asked.group != group.name
            || waited(asked.at, now) >= timeout
            || asked.delivered.is_some_and(|at| waited(at, now) >= settle);
        if over {
            self.0.remove(pool);
        }
        over
    }

    pub fn asked(&mut self, pool: &str, group: &str, to: i32, now: Timestamp) {
        let asked = Asked {
            group: group.to_string(),
            at: now,
            to,
            delivered: None,
        };
        self.0.insert(pool.to_string(), asked);
    }
}

/// Other autoscalers found in the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detected {
    pub karpenter: bool,
    pub cluster_autoscaler: bool,
}

/// Whether pools are scaled up for pending pods: never with `--capacity=false`; in
/// `auto` only once a detection found neither Karpenter nor Cluster Autoscaler.
pub fn scale_up_active(mode: ScaleUp, capacity: bool, detected: Option<Detected>) -> bool {
    capacity
        && match mode {
            ScaleUp::On => true,
            ScaleUp::Off => false,
            ScaleUp::Auto => detected.is_some_and(|d| !d.karpenter && !d.cluster_autoscaler),
        }
}

/// Karpenter: its API group is served.
pub fn karpenter_served(groups: &APIGroupList) -> bool {
    groups.groups.iter().any(|g| g.name == "karpenter.sh")
}

/// A Deployment that is Cluster Autoscaler: by its name in kube-system, or its label.
pub fn is_cluster_autoscaler(d: &Deployment) -> bool {
    let named = d.metadata.name.as_deref() == Some("cluster-autoscaler")
        && d.metadata.namespace.as_deref() == Some("kube-system");
    let labelled = d
        .labels()
        .get("app.kubernetes.io/name")
        .is_some_and(|v| CLUSTER_AUTOSCALER_NAMES.contains(&v.as_str()));
    named || labelled
}

/// Discovery for Karpenter, a labelled LIST of Deployments and a GET in kube-system for
/// Cluster Autoscaler.
async fn detect(client: &Client) -> Result<Detected> {
    let groups = client.list_api_groups().await.kube("list", "API groups")?;
    let selector = format!(
        "app.kubernetes.io/name in ({})",
        CLUSTER_AUTOSCALER_NAMES.join(",")
    );
    let labelled = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default().labels(&selector).limit(1))
        .await
        .kube("list", "deployments")?
        .items;
    let named = Api::<Deployment>::namespaced(client.clone(), "kube-system")
        .get_opt("cluster-autoscaler")
        .await
        .kube("get", "deployment/kube-system/cluster-autoscaler")?;
    Ok(Detected {
        karpenter: karpenter_served(&groups),
        cluster_autoscaler: labelled
            .iter()
            .chain(named.as_ref())
            .any(is_cluster_autoscaler),
    })
}

/// How the loop works (flags of `run`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--pending-after`.
    pub after: Duration,
    /// `--scale-up-pending`.
    pub scale_up: ScaleUp,
}

/// What scale-up needs; `None` with `--capacity=false`.
#[derive(Clone)]
pub struct ScaleUpJob {
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub discovery: DiscoveryConfig,
    /// `--capacity-timeout`: a request not delivered by then no longer holds its pool.
    pub timeout: Duration,
}

/// The loop and what it needs.
#[derive(Clone)]
pub struct PendingLoop {
    pub ctx: Context,
    pub settings: Settings,
    pub scale_up: Option<ScaleUpJob>,
}

/// What one term remembers.
#[derive(Default)]
struct Memory {
    /// Pods given the Unschedulable Event.
    reported: Reported,
    /// Pods given a scale-up (or capped) Event.
    told: Reported,
    in_flight: InFlight,
    detection: Option<(Instant, Detected)>,
}

impl PendingLoop {
    pub async fn run(self, stop: CancellationToken) {
        let index = PodIndex::<Unschedulable>::default();
        let synced = Readiness::default().gate("pending pods");
        let watch = watch_pods(&self.ctx, FIELD_SELECTOR, &index, &synced, "pending pods");
        let mut watch = std::pin::pin!(watch);
        let mut memory = Memory::default();
        let every = poll_every(self.settings.after);
        while next_tick(watch.as_mut(), &synced, every, &stop).await {
            if let Err(error) = self.pass(&index, &mut memory).await {
                tracing::warn!(%error, "pending pods pass failed");
            }
        }
        // A former leader no longer knows: leave the count to the new one.
        self.ctx.metrics.capacity.pending_pods.set(0);
    }

    /// Reports newly overdue pods and, when scale-up is on, raises their pools.
    async fn pass(&self, index: &PodIndex<Unschedulable>, memory: &mut Memory) -> Result<()> {
        let now = Timestamp::now();
        memory.reported.forget_gone(index);
        memory.told.forget_gone(index);
        let overdue = index.overdue(now, self.settings.after);
        let metrics = &self.ctx.metrics.capacity;
        if overdue.is_empty() {
            metrics.pending_pods.set(0);
            return Ok(());
        }
        let opted_in_namespaces: HashSet<String> = Api::<Namespace>::all(self.ctx.client.clone())
            .list_metadata(&ListParams::default().labels(&format!("{LABEL}=true")))
            .await
            .kube("list", "namespaces")?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        let pods: Vec<Unschedulable> = overdue
            .into_iter()
            .filter(|p| opted_in(opted_in_namespaces.contains(&p.namespace), p.enabled))
            .collect();
        metrics.pending_pods.set(pods.len() as i64);
        for pod in &pods {
            if !memory.reported.first_time(&pod.uid) {
                continue;
            }
            for reason in reasons(&pod.message) {
                metrics
                    .unschedulable
                    .get_or_create(&vec![("reason", reason)])
                    .inc();
            }
            let waited = waited(pod.since, now).as_secs();
            tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.reference.name.as_deref().unwrap_or_default()), waited, message = %pod.message, "pod Unschedulable");
            let note = format!("Unschedulable for {waited} s: {}", pod.message);
            self.ctx
                .event(&pod.reference, EventType::Warning, REASON, note)
                .await;
        }
        if self.scale_up_active(memory).await {
            self.scale_up(&pods, memory, now).await?;
        }
        Ok(())
    }

    /// Whether scale-up is on now (`auto`: detection at most every [`DETECT_EVERY`]; a
    /// failed detection keeps the last answer, none at first: off).
    async fn scale_up_active(&self, memory: &mut Memory) -> bool {
        let mode = self.settings.scale_up;
        if self.scale_up.is_none() || mode != ScaleUp::Auto {
            return scale_up_active(mode, self.scale_up.is_some(), None);
        }
        let stale = memory
            .detection
            .is_none_or(|(at, _)| at.elapsed() >= DETECT_EVERY);
        if stale {
            match detect(&self.ctx.client).await {
                Ok(found) => {
                    if memory.detection.map(|(_, d)| d) != Some(found) {
                        tracing::info!(
                            karpenter = found.karpenter,
                            cluster_autoscaler = found.cluster_autoscaler,
                            active = scale_up_active(mode, true, Some(found)),
                            "scale-up for pending pods (auto)"
                        );
                    }
                    memory.detection = Some((Instant::now(), found));
                }
                Err(error) => {
                    tracing::warn!(%error, "could not look for another autoscaler");
                }
            }
        }
        scale_up_active(mode, true, memory.detection.map(|(_, d)| d))
    }

    /// Raises by one the spot group of each pool some of `pods` resolve to.
    async fn scale_up(
        &self,
        pods: &[Unschedulable],
        memory: &mut Memory,
        now: Timestamp,
    ) -> Result<()> {
        let Some(job) = &self.scale_up else {
            return Ok(());
        };
        if pods.iter().all(|p| p.requires.is_none()) {
            return Ok(());
        }
        let found = pools::discover(&job.autoscaling, &job.discovery).await?;
        let nodes = Api::<Node>::all(self.ctx.client.clone())
            .list(&ListParams::default())
            .await
            .kube("list", "nodes")?
            .items;
        let (facts, ready_instances) = node_facts(&nodes, &found);
        let mut by_pool: BTreeMap<&str, Vec<&Unschedulable>> = BTreeMap::new();
        for pod in pods {
            if let Some(pool) = pod.requires.as_ref().and_then(|r| pool_for(r, &facts)) {
                by_pool.entry(pool).or_default().push(pod);
            }
        }
        for (pool, waiting) in by_pool {
            let Some(group) = found.pools.get(pool).and_then(|p| p.spot.as_ref()) else {
                tracing::debug!(pool, "pool has no spot group: not scaled for pending pods");
                continue;
            };
            let ready = group
                .instances
                .iter()
                .filter(|i| ready_instances.contains(i.as_str()))
                .count();
            let ready = i32::try_from(ready).unwrap_or(i32::MAX);
            let settle = self.settings.after;
            if !memory
                .in_flight
                .may_ask(pool, group, ready, now, job.timeout, settle)
            {
                continue;
            }
            let outcome = asg::request_above(&job.autoscaling, group).await?;
            self.scaled(pool, group, outcome, &waiting, memory, now)
                .await;
        }
        Ok(())
    }

    async fn scaled(
        &self,
        pool: &str,
        group: &Group,
        outcome: Request,
        waiting: &[&Unschedulable],
        memory: &mut Memory,
        now: Timestamp,
    ) {
        let metrics = &self.ctx.metrics.capacity;
        let (type_, reason, note, (capacity, outcome)) = match outcome {
            Request::Requested { from, to } => {
                memory.in_flight.asked(pool, &group.name, to, now);
                tracing::info!(pool, group = %group.name, from, to, pods = waiting.len(), "spot group raised for Unschedulable pods");
                let note = format!(
                    "pool {pool}'s spot group {} raised from {from} to {to} for this Unschedulable pod",
                    group.name
                );
                (EventType::Normal, SCALE_UP, note, ("spot", "requested"))
            }
            Request::Capped { max } => {
                let note = format!(
                    "pool {pool}'s spot group {} is at its MaxSize {max}: not raised for this Unschedulable pod",
                    group.name
                );
                (EventType::Warning, CAPPED, note, ("capped", "capped"))
            }
        };
        let mut told = 0;
        for pod in waiting {
            if memory.told.first_time(&pod.uid) {
                told += 1;
                self.ctx
                    .event(&pod.reference, type_, reason, note.clone())
                    .await;
            }
        }
        // A group left at MaxSize is seen every pass: counted when it stops new pods.
        if outcome == "requested" || told > 0 {
            // As the capacity loop labels its requests.
            metrics
                .requests
                .get_or_create(&labels(pool, "capacity", capacity))
                .inc();
            metrics
                .pending_scale_ups
                .get_or_create(&labels(pool, "outcome", outcome))
                .inc();
        }
    }
}

/// The facts of every Node and the instances whose Node is Ready.
fn node_facts(nodes: &[Node], pools: &Pools) -> (Vec<NodeFacts>, HashSet<String>) {
    let mut facts = Vec::with_capacity(nodes.len());
    let mut ready_instances = HashSet::new();
    for node in nodes {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let identity = NodeIdentity::of(node, None);
        let instance = identity.instance_id();
        if ready && let Some(id) = instance {
            ready_instances.insert(id.to_string());
        }
        facts.push(NodeFacts {
            labels: node.labels().clone(),
            ready,
            pool: instance
                .and_then(|i| pools.pool_of_instance(i, &[]))
                .map(|m| m.pool.name.clone()),
        });
    }
    (facts, ready_instances)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, Time};
    use kube::api::ObjectMeta;

    use super::*;

    const T0: &str = "2026-12-01T10:00:00Z";
    const FULL: &str = "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {spotkube.io/interruption: }. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";

    fn at(offset_secs: i64) -> Timestamp {
        T0.parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(offset_secs)
    }

    fn pod(uid: &str, condition: Option<(&str, &str)>, transition: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("pod-{uid}")),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                creation_timestamp: Some(Time(at(0))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_selector: Some(BTreeMap::from([("pool".into(), "web".into())])),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                conditions: condition.map(|(status, reason)| {
                    vec![PodCondition {
                        type_: "PodScheduled".into(),
                        status: status.into(),
                        reason: Some(reason.into()),
                        message: Some(FULL.into()),
                        last_transition_time: Some(Time(at(transition))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn affinity(terms: Vec<Vec<(&str, &str, &[&str])>>) -> Affinity {
        Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms
                        .into_iter()
                        .map(|exprs| NodeSelectorTerm {
                            match_expressions: Some(
                                exprs
                                    .into_iter()
                                    .map(|(key, op, values)| NodeSelectorRequirement {
                                        key: key.into(),
                                        operator: op.into(),
                                        values: Some(
                                            values.iter().map(|v| v.to_string()).collect(),
                                        ),
                                    })
                                    .collect(),
                            ),
                            match_fields: None,
                        })
                        .collect(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_pending_unschedulable_pods_are_tracked_from_their_condition_time() {
        let tracked = Unschedulable::read(&pod("a", Some(("False", "Unschedulable")), 30)).unwrap();
        assert_eq!(
            tracked.since,
            at(30),
            "from the condition, not the creation"
        );
        assert_eq!(tracked.message, FULL);
        assert_eq!(tracked.namespace, "shop");
        assert_eq!(tracked.reference.kind.as_deref(), Some("Pod"));
        assert!(
            Unschedulable::read(&pod("b", None, 0)).is_none(),
            "no scheduler verdict yet"
        );
        assert!(Unschedulable::read(&pod("c", Some(("False", "SchedulingGated")), 0)).is_none());
        assert!(Unschedulable::read(&pod("d", Some(("True", "")), 0)).is_none());
        let mut bound = pod("e", Some(("False", "Unschedulable")), 0);
        bound.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert!(Unschedulable::read(&bound).is_none());
        let mut deleting = pod("f", Some(("False", "Unschedulable")), 0);
        deleting.metadata.deletion_timestamp = Some(Time(at(5)));
        assert!(Unschedulable::read(&deleting).is_none());
    }

    #[test]
    fn pods_are_overdue_past_the_threshold_and_reported_once_until_they_leave() {
        let index = PodIndex::<Unschedulable>::default();
        let gate = Readiness::default().gate("test");
        let feed = |events: Vec<kube::runtime::watcher::Event<Pod>>| {
            futures::executor::block_on(spotkube_shared::watch::drive(
                futures::stream::iter(events.into_iter().map(Ok)),
                &index,
                &gate,
                "test",
            ))
        };
        use kube::runtime::watcher::Event;
        feed(vec![
            Event::Init,
            Event::InitApply(pod("old", Some(("False", "Unschedulable")), 0)),
            Event::InitApply(pod("young", Some(("False", "Unschedulable")), 100)),
            Event::InitDone,
        ]);
        let after = Duration::from_secs(120);
        let uids = |now| {
            index
                .overdue(now, after)
                .into_iter()
                .map(|p| p.uid)
                .collect::<Vec<_>>()
        };
        assert!(
            uids(at(120)).is_empty(),
            "exactly the threshold is not over"
        );
        assert_eq!(uids(at(121)), ["old"]);
        assert_eq!(uids(at(221)), ["old", "young"]);
        let mut reported = Reported::default();
        assert!(reported.first_time("old"));
        assert!(!reported.first_time("old"), "one Event per pod");
        // Scheduled at last: forgotten, so it is reported again if it comes back.
        feed(vec![Event::Delete(pod("old", None, 0))]);
        reported.forget_gone(&index);
        assert!(reported.first_time("old"));
    }

    #[test]
    fn the_schedulers_reasons_lose_counts_and_taint_details() {
        assert_eq!(
            reasons(FULL),
            ["Insufficient cpu", "node(s) had untolerated taint"]
        );
        assert_eq!(
            reasons(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
            ),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        assert_eq!(reasons("no nodes available to schedule pods"), ["other"]);
        assert_eq!(reasons(""), ["other"]);
    }

    #[test]
    fn requirements_come_from_the_node_selector_and_simple_required_affinity() {
        let mut spec = PodSpec {
            node_selector: Some(labels(&[("pool", "web")])),
            affinity: Some(affinity(vec![vec![
                ("zone", "In", &["a", "b"]),
                ("pool", "In", &["web", "batch"]),
            ]])),
            ..Default::default()
        };
        let r = Requirements::of(&spec).unwrap();
        assert!(r.matches(&labels(&[("pool", "web"), ("zone", "a")])));
        assert!(
            !r.matches(&labels(&[("pool", "batch"), ("zone", "a")])),
            "both must hold"
        );
        assert!(!r.matches(&labels(&[("pool", "web")])), "zone required");
        // ORed terms, other operators: the pool is not resolved.
        spec.affinity = Some(affinity(vec![vec![("pool", "In", &["web"])], vec![]]));
        assert_eq!(Requirements::of(&spec), None);
        spec.affinity = Some(affinity(vec![vec![("pool", "NotIn", &["batch"])]]));
        assert_eq!(Requirements::of(&spec), None);
        spec.affinity = None;
        assert_eq!(
            Requirements::of(&spec).unwrap().0,
            BTreeMap::from([("pool".to_string(), BTreeSet::from(["web".to_string()]))])
        );
    }

    #[test]
    fn a_pool_is_known_when_every_ready_matching_node_is_of_that_one_pool() {
        let node = |pool_label: &str, ready: bool, pool: Option<&str>| NodeFacts {
            labels: labels(&[("pool", pool_label)]),
            ready,
            pool: pool.map(str::to_string),
        };
        let web = Requirements(BTreeMap::from([(
            "pool".to_string(),
            BTreeSet::from(["web".to_string()]),
        )]));
        let nodes = vec![
            node("web", true, Some("web-pool")),
            node("web", true, Some("web-pool")),
            node("web", false, None),
            node("batch", true, Some("batch-pool")),
        ];
        assert_eq!(
            pool_for(&web, &nodes),
            Some("web-pool"),
            "NotReady nodes don't count"
        );
        let mut two = nodes.clone();
        two.push(node("web", true, Some("other-pool")));
        assert_eq!(pool_for(&web, &two), None, "two pools");
        let mut karpenter = nodes.clone();
        karpenter.push(node("web", true, None));
        assert_eq!(pool_for(&web, &karpenter), None, "a node of no pool");
        assert_eq!(
            pool_for(&Requirements::default(), &nodes),
            None,
            "any node: two pools"
        );
        let none = Requirements(BTreeMap::from([(
            "pool".to_string(),
            BTreeSet::from(["gpu".to_string()]),
        )]));
        assert_eq!(pool_for(&none, &nodes), None, "no node matches");
    }

    #[test]
    fn one_request_per_pool_until_delivered_and_settled_or_timed_out() {
        let group = |desired: i32, in_service: i32| Group {
            name: "web-spot".into(),
            min: 0,
            max: 5,
            desired,
            in_service,
            zones: vec![],
            instances: vec![],
        };
        let timeout = Duration::from_secs(240);
        let settle = Duration::from_secs(120);
        let mut flight = InFlight::default();
        assert!(flight.may_ask("web", &group(1, 1), 1, at(0), timeout, settle));
        flight.asked("web", "web-spot", 2, at(0));
        assert!(!flight.may_ask("web", &group(2, 1), 1, at(10), timeout, settle));
        assert!(
            flight.may_ask("batch", &group(1, 1), 1, at(10), timeout, settle),
            "other pools are not held"
        );
        // InService but its Node not Ready yet: still in flight.
        assert!(!flight.may_ask("web", &group(2, 2), 1, at(20), timeout, settle));
        // Delivered at 30 s: the pods get `settle` to land on it.
        assert!(!flight.may_ask("web", &group(2, 2), 2, at(30), timeout, settle));
        assert!(!flight.may_ask("web", &group(2, 2), 2, at(149), timeout, settle));
        assert!(flight.may_ask("web", &group(2, 2), 2, at(150), timeout, settle));
        assert!(
            flight.may_ask("web", &group(2, 2), 2, at(151), timeout, settle),
            "forgotten"
        );
        // Never delivered: the timeout frees the pool.
        flight.asked("web", "web-spot", 3, at(200));
        assert!(!flight.may_ask("web", &group(3, 2), 2, at(439), timeout, settle));
        assert!(flight.may_ask("web", &group(3, 2), 2, at(440), timeout, settle));
    }

    #[test]
    fn auto_scales_up_only_when_no_other_autoscaler_was_found() {
        let none = Detected::default();
        let karpenter = Detected {
            karpenter: true,
            ..none
        };
        let ca = Detected {
            cluster_autoscaler: true,
            ..none
        };
        assert!(scale_up_active(ScaleUp::Auto, true, Some(none)));
        assert!(!scale_up_active(ScaleUp::Auto, true, Some(karpenter)));
        assert!(!scale_up_active(ScaleUp::Auto, true, Some(ca)));
        assert!(
            !scale_up_active(ScaleUp::Auto, true, None),
            "not detected yet: off"
        );
        assert!(
            scale_up_active(ScaleUp::On, true, Some(karpenter)),
            "told to"
        );
        assert!(!scale_up_active(ScaleUp::Off, true, Some(none)));
        assert!(
            !scale_up_active(ScaleUp::On, false, None),
            "--capacity=false"
        );
    }

    #[test]
    fn karpenter_and_cluster_autoscaler_are_recognised() {
        let group = |name: &str| APIGroup {
            name: name.into(),
            ..Default::default()
        };
        let mut groups = APIGroupList {
            groups: vec![group("apps"), group("karpenter.k8s.aws")],
        };
        assert!(!karpenter_served(&groups));
        groups.groups.push(group("karpenter.sh"));
        assert!(karpenter_served(&groups));

        let deployment = |ns: &str, name: &str, label: Option<&str>| Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: label.map(|l| labels(&[("app.kubernetes.io/name", l)])),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(is_cluster_autoscaler(&deployment(
            "kube-system",
            "cluster-autoscaler",
            None
        )));
        assert!(is_cluster_autoscaler(&deployment(
            "autoscaling",
            "ca-aws-cluster-autoscaler",
            Some("aws-cluster-autoscaler")
        )));
        assert!(!is_cluster_autoscaler(&deployment(
            "shop",
            "cluster-autoscaler",
            None
        )));
        assert!(!is_cluster_autoscaler(&deployment(
            "kube-system",
            "coredns",
            Some("coredns")
        )));
    }

    #[test]
    fn the_flags_default_to_two_minutes_and_auto() {
        use clap::Parser;

        use crate::config::{Cli, Command};
        let parse = |extra: &[&str]| {
            let mut argv = vec!["spotkube-controller", "run", "--queue-url=q"];
            argv.extend_from_slice(extra);
            let Some(Command::Run(args)) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not run");
            };
            args.capacity
        };
        let defaults = parse(&[]);
        assert_eq!(defaults.pending_after, Duration::from_secs(120));
        assert_eq!(defaults.scale_up_pending, ScaleUp::Auto);
        let set = parse(&["--pending-after=2s", "--scale-up-pending=on"]);
        assert_eq!(set.pending_after, Duration::from_secs(2));
        assert_eq!(set.scale_up_pending, ScaleUp::On);
    }
}
