//! The two extender verbs over raw request bytes: parse `ExtenderArgs`, decide, and
//! write the answer. Requests are read into borrowed views (node names stay slices of
//! the body; only the Pod's metadata is decoded) and answers are written from borrowed
//! views, so a 5,000-name prioritize call allocates little beyond its output buffer.
//! The owned wire types live in [`spotkube_shared::extender_api`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};
use spotkube_shared::annotations::Capacity;
use spotkube_shared::node::CapacityType;
use spotkube_shared::policy::{self, Layers, Policy};

use crate::cache::{Cluster, View};
use crate::facts::{Interruption, NodeFacts};

/// The scheduler sent something that is not `ExtenderArgs`: answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("request body is not ExtenderArgs: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ExtenderArgs carries neither Nodes nor NodeNames")]
    NoCandidates,
}

/// Why a node failed the filter (the `FailedNodes` reasons).
pub const REASON_UNKNOWN: &str = "node is not in spotkube's node cache";

#[derive(Deserialize)]
struct PodMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "ownerReferences")]
    owner_references: Option<Vec<OwnerLite>>,
}

/// The two fields of an ownerReference the filter reads (tolerant of the rest).
#[derive(Deserialize)]
struct OwnerLite {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    controller: Option<bool>,
}

#[derive(Deserialize)]
struct PodView {
    metadata: PodMeta,
}

#[derive(Deserialize)]
struct NodeListIn<N> {
    #[serde(default = "Vec::new")]
    items: Vec<N>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", bound(deserialize = "N: Deserialize<'de>"))]
struct ArgsIn<'a, N> {
    pod: PodView,
    #[serde(default)]
    nodes: Option<NodeListIn<N>>,
    #[serde(default, borrow)]
    node_names: Option<Vec<Cow<'a, str>>>,
}

/// Candidate nodes in either form.
enum Candidates<'a, N> {
    Names(Vec<Cow<'a, str>>),
    Nodes(Vec<N>),
}

fn parse<'a, N: Deserialize<'a>>(
    body: &'a [u8],
) -> Result<(PodView, Candidates<'a, N>), BadRequest> {
    let args: ArgsIn<'a, N> = serde_json::from_slice(body)?;
    let candidates = match (args.node_names, args.nodes) {
        (Some(names), _) => Candidates::Names(names),
        (None, Some(list)) => Candidates::Nodes(list.items),
        (None, None) => return Err(BadRequest::NoCandidates),
    };
    record_pod(&args.pod.metadata);
    Ok((args.pod, candidates))
}

/// Records `namespace/name` of the pod on the current (request) span, once parsed. A
/// no-op without a span (benchmarks call the verbs directly).
fn record_pod(pod: &PodMeta) {
    let namespace = pod.namespace.as_deref().unwrap_or_default();
    let name = pod.name.as_deref().unwrap_or_default();
    tracing::Span::current().record(
        "pod",
        tracing::field::display(format_args!("{namespace}/{name}")),
    );
}

/// Only the parts of a Node that scoring reads: prioritize never returns Node objects,
/// so it skips decoding status, managed fields and the rest (most of a Node's bytes).
#[derive(Deserialize)]
struct NodeLite {
    metadata: NodeMetaLite,
    #[serde(default)]
    spec: Option<NodeSpecLite>,
}

#[derive(Deserialize)]
struct NodeMetaLite {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct NodeSpecLite {
    #[serde(default, rename = "providerID")]
    provider_id: Option<String>,
    #[serde(default)]
    taints: Option<Vec<k8s_openapi::api::core::v1::Taint>>,
}

impl NodeLite {
    fn into_node(self) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: self.metadata.name,
                labels: self.metadata.labels,
                annotations: self.metadata.annotations,
                ..Default::default()
            },
            spec: self.spec.map(|s| k8s_openapi::api::core::v1::NodeSpec {
                provider_id: s.provider_id,
                taints: s.taints,
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// A verb's answer: the JSON body and what the request did.
pub type Answer = Result<(Vec<u8>, Outcome), BadRequest>;

/// What one request did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub nodes: usize,
    pub interrupted: usize,
    pub policy_excluded: usize,
    pub unknown: usize,
    /// Prioritize answered without a ranking (neutral scores).
    pub no_ranking: bool,
}

/// The pod's resolved policy: cluster defaults < namespace < pod (the pod carries its
/// template's annotations; the workload object's own metadata is not visible here).
/// A DaemonSet pod gets none: its controller already chose its one node, and excluding
/// that node for its capacity would leave it Pending for good.
fn pod_policy(view: &View<'_>, pod: &PodView) -> Policy {
    let daemonset = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| spotkube_shared::pod::is_daemonset_controller(&o.kind, o.controller));
    if daemonset {
        return Policy::default();
    }
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .and_then(|ns| view.namespace_annotations(ns));
    policy::resolve(
        &Policy::default(),
        Layers {
            namespace,
            workload: None,
            pod: pod.metadata.annotations.as_ref(),
        },
    )
    .policy
}

/// Why `policy` keeps the pod off a node of `capacity`, if it does.
fn policy_exclusion(policy: &Policy, capacity: CapacityType) -> Option<String> {
    if !policy.enabled {
        return None;
    }
    match (policy.capacity, capacity) {
        // A `fargate` pod is not spotkube's to schedule (the webhook sends it to Fargate's
        // scheduler); if one arrives here all the same, it is kept off spot as on-demand.
        (Capacity::OnDemand | Capacity::Fargate, CapacityType::Spot) => Some(format!(
            "pod policy spotkube.io/capacity={} excludes spot nodes",
            policy.capacity
        )),
        (Capacity::SpotOnly, c) if c != CapacityType::Spot => Some(format!(
            "pod policy spotkube.io/capacity=spot-only excludes {c} nodes"
        )),
        _ => None,
    }
}

fn verdict(policy: &Policy, facts: &NodeFacts, outcome: &mut Outcome) -> Option<String> {
    if let Interruption::Imminent(reason) = &facts.interruption {
        outcome.interrupted += 1;
        return Some(reason.clone());
    }
    let excluded = policy_exclusion(policy, facts.capacity);
    if excluded.is_some() {
        outcome.policy_excluded += 1;
    }
    excluded
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FilterOut<'a> {
    nodes: Option<NodeListOut<'a>>,
    node_names: Option<Vec<&'a str>>,
    failed_nodes: BTreeMap<&'a str, String>,
    failed_and_unresolvable_nodes: BTreeMap<&'a str, String>,
    error: &'static str,
}

#[derive(Serialize)]
struct NodeListOut<'a> {
    items: Vec<&'a Node>,
}

/// `POST /filter`.
pub fn filter(cluster: &Cluster, body: &[u8]) -> Answer {
    let (pod, candidates) = parse::<Node>(body)?;
    let view = cluster.view();
    let policy = pod_policy(&view, &pod);
    let mut outcome = Outcome::default();
    let mut failed = BTreeMap::new();
    let out = match &candidates {
        Candidates::Names(names) => {
            outcome.nodes = names.len();
            let mut passed = Vec::with_capacity(names.len());
            for name in names {
                match view.node(name) {
                    None => {
                        outcome.unknown += 1;
                        failed.insert(name.as_ref(), REASON_UNKNOWN.to_string());
                    }
                    Some(cached) => match verdict(&policy, &cached.facts, &mut outcome) {
                        Some(reason) => {
                            failed.insert(name.as_ref(), reason);
                        }
                        None => passed.push(name.as_ref()),
                    },
                }
            }
            FilterOut {
                nodes: None,
                node_names: Some(passed),
                failed_nodes: failed,
                failed_and_unresolvable_nodes: BTreeMap::new(),
                error: "",
            }
        }
        Candidates::Nodes(nodes) => {
            outcome.nodes = nodes.len();
            let mut passed = Vec::with_capacity(nodes.len());
            for node in nodes {
                let name = node.metadata.name.as_deref().unwrap_or_default();
                let facts = cluster.facts(node);
                match verdict(&policy, &facts, &mut outcome) {
                    Some(reason) => {
                        failed.insert(name, reason);
                    }
                    None => passed.push(node),
                }
            }
            FilterOut {
                nodes: Some(NodeListOut { items: passed }),
                node_names: None,
                failed_nodes: failed,
                failed_and_unresolvable_nodes: BTreeMap::new(),
                error: "",
            }
        }
    };
    let bytes = serde_json::to_vec(&out).expect("filter result serializes");
    Ok((bytes, outcome))
}

/// Appends `s` as a JSON string. A name with nothing to escape (every node name: a DNS
/// subdomain) is copied as is; anything else goes through serde_json.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a str serializes");
    }
}

/// Appends one `{"Host":…,"Score":…}` entry of a `HostPriorityList`.
fn push_priority(out: &mut Vec<u8>, first: bool, host: &str, score: i64) {
    use std::io::Write as _;
    if !first {
        out.push(b',');
    }
    out.extend_from_slice(b"{\"Host\":");
    push_json_str(out, host);
    out.extend_from_slice(b",\"Score\":");
    match u8::try_from(score) {
        // Scores are 0..=10: one or two digits, no formatting machinery.
        Ok(n @ 0..=9) => out.push(b'0' + n),
        _ => write!(out, "{score}").expect("writing to a Vec"),
    }
    out.push(b'}');
}

/// `POST /prioritize`. Unknown names score 0 (prioritize cannot fail a node; filter
/// already reported them). Without a ranking every known node scores neutral.
///
/// Names mode reads each score from the precomputed per-node table (one lookup per
/// name) and writes the `HostPriorityList` straight into the reply buffer: no
/// intermediate list, no per-entry allocation.
pub fn prioritize(cluster: &Cluster, body: &[u8]) -> Answer {
    let (_pod, candidates) = parse::<NodeLite>(body)?;
    let view = cluster.view();
    let mut outcome = Outcome {
        no_ranking: !view.index().is_present(),
        ..Outcome::default()
    };
    // One clock read per request: unavailable marks lapse by time, not by event.
    let now = jiff::Timestamp::now();
    let mut bytes;
    match candidates {
        Candidates::Names(ref names) => {
            // ~40 bytes per entry: one allocation for the whole answer.
            bytes = Vec::with_capacity(names.len() * 48 + 2);
            bytes.push(b'[');
            for (i, name) in names.iter().enumerate() {
                let score = match view.node(name) {
                    Some(cached) => cached.score_at(now),
                    None => {
                        outcome.unknown += 1;
                        0
                    }
                };
                push_priority(&mut bytes, i == 0, name, score);
            }
            outcome.nodes = names.len();
        }
        Candidates::Nodes(nodes) => {
            bytes = Vec::with_capacity(nodes.len() * 48 + 2);
            bytes.push(b'[');
            outcome.nodes = nodes.len();
            for (i, lite) in nodes.into_iter().enumerate() {
                let node = lite.into_node();
                let score = view.index().score_at(&cluster.facts(&node), now);
                let host = node.metadata.name.as_deref().unwrap_or_default();
                push_priority(&mut bytes, i == 0, host, score);
            }
        }
    }
    bytes.push(b']');
    Ok((bytes, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotkube_shared::extender_api::HostPriority;

    #[test]
    fn the_hand_written_priority_list_is_the_json_serde_writes() {
        let entries = [
            ("ip-10-0-1-2.ec2.internal", 10),
            ("needs \"escaping\" \\ \u{1}", 0),
            ("ünïcode", 7),
            ("", -3),
            ("x", 1234),
        ];
        let mut out = vec![b'['];
        for (i, (host, score)) in entries.iter().enumerate() {
            push_priority(&mut out, i == 0, host, *score);
        }
        out.push(b']');
        let parsed: Vec<HostPriority> = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed.len(), entries.len());
        for (p, (host, score)) in parsed.iter().zip(entries) {
            assert_eq!((p.host.as_str(), p.score), (host, score));
        }
    }
}
