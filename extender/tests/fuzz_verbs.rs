//! Fuzz target: ExtenderArgs → `POST /filter` and `POST /prioritize` (the real router).
//!
//! Inputs: both modes of the scheduler (`NodeNames` only, or full Node objects under
//! `Nodes.items`), names the extender's node cache holds and names it does not, empty
//! lists, duplicates, long lists (up to 2,000 names), nodes without a name, the captured
//! fixtures' Pod and Nodes, pods with every policy (namespace and pod annotations, valid
//! and invalid values, DaemonSet pods), with and without a ranking; and malformed bodies
//! (arbitrary bytes, truncated JSON, the fixtures with a field removed or of the wrong
//! type). Invariants, per input:
//! - never a 5xx; well-formed ExtenderArgs → 200, anything not JSON → 4xx, and a body
//!   that is JSON but not ExtenderArgs → 200 or 4xx;
//! - filter: every name in `NodeNames` / `Nodes.items` and in `FailedNodes` is an input
//!   name; kept ∪ failed = the input names; kept is exactly the input (same order, Node
//!   objects unchanged) less the nodes that must fail: an interrupted node, a node the
//!   pod's policy excludes, a name the cache does not know (worked out here, from how
//!   each node was generated, not with the extender's code); `Error` is empty;
//! - prioritize: one entry per input, in order, for that input's name; each score is the
//!   one its node's rank, capacity and interruption give (unknown names 0, 5 for every
//!   quiet node without a ranking), within 0..=10.
//!
//! Cases: `SPOTKUBE_FUZZ_CASES` (default: proptest's `PROPTEST_CASES`, else 256);
//! seed: `SPOTKUBE_FUZZ_SEED` (default random, printed). `make fuzz` runs 10⁶.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use k8s_openapi::api::core::v1::Node;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use spotkube_extender::cache::Cluster;
use spotkube_extender::metrics::Metrics;
use spotkube_extender::server::{AppState, Limits, router};
use spotkube_extender::verbs::REASON_UNKNOWN;
use spotkube_shared::annotations::{CAPACITY, ENABLED, INTERRUPTION, INTERRUPTION_TAINT};
use spotkube_shared::extender_api::{ExtenderFilterResult, HostPriority};
use spotkube_shared::labels::{
    EKS_CAPACITY_TYPE, EKS_COMPUTE_TYPE, INSTANCE_TYPE, KARPENTER_CAPACITY_TYPE, ZONE,
};
use spotkube_shared::ranking::{RankedType, Ranking, SCHEMA_VERSION};
use tower::ServiceExt;

// The harness (count, seed, no failure files) every fuzz target shares.
#[path = "../../testdata/fuzz_harness.rs"]
mod fuzz_harness;
use fuzz_harness::fuzz;

// ---- the cluster the extender knows ---------------------------------------------------

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/fixtures/extender");

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()).unwrap()
}

static FILTER_FULL: LazyLock<Value> = LazyLock::new(|| fixture("filter-full-nodes.json"));
static FILTER_NAMES: LazyLock<Value> = LazyLock::new(|| fixture("filter-node-names.json"));

/// How a node stands, as the oracle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capacity {
    Spot,
    OnDemand,
    /// No capacity label, or Fargate: not spot, not excluded by on-demand.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    None,
    /// Filtered out.
    Imminent,
    /// Kept, scored 0.
    Rebalancing,
}

/// One node the generator can send (and, for names in the cache, the extender knows).
struct Template {
    node: Value,
    capacity: Capacity,
    trouble: Trouble,
    /// The rank of its type in its zone in [`ranking`], if ranked.
    rank: Option<u32>,
}

fn node(
    name: &str,
    labels: &[(&str, &str)],
    annotation: Option<&str>,
    taint: Option<&str>,
) -> Value {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let mut n = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels}, "spec": {}});
    if let Some(a) = annotation {
        n["metadata"]["annotations"] = json!({ INTERRUPTION: a });
    }
    if let Some(effect) = taint {
        n["spec"]["taints"] = json!([{"key": INTERRUPTION_TAINT, "effect": effect}]);
    }
    n
}

fn templates() -> Vec<Template> {
    use Capacity::*;
    let t = |node, capacity, trouble, rank| Template {
        node,
        capacity,
        trouble,
        rank,
    };
    let spot_1a_m7g = [
        (EKS_CAPACITY_TYPE, "SPOT"),
        (ZONE, "us-east-1a"),
        (INSTANCE_TYPE, "m7g.large"),
    ];
    let interruption = r#"{"kind":"spot-interruption","deadline":"2026-11-22T10:02:00Z"}"#;
    let rebalance = r#"{"kind":"rebalance-recommendation"}"#;
    let planned = r#"{"kind":"scheduled-change","deadline":"2026-11-28T13:19:03Z","drain_from":"2026-11-28T13:04:03Z"}"#;
    let mut pid = node(
        "spot-pid-1b",
        &[(EKS_CAPACITY_TYPE, "SPOT"), (INSTANCE_TYPE, "m7g.large")],
        None,
        None,
    );
    pid["spec"]["providerID"] = json!("aws:///us-east-1b/i-0123456789abcdef0");
    let mut all = vec![
        t(
            node("spot-1a-m7g", &spot_1a_m7g, None, None),
            Spot,
            Trouble::None,
            Some(6),
        ),
        t(
            node(
                "spot-1a-c7g",
                &[
                    (KARPENTER_CAPACITY_TYPE, "spot"),
                    (ZONE, "us-east-1a"),
                    (INSTANCE_TYPE, "c7g.xlarge"),
                ],
                None,
                None,
            ),
            Spot,
            Trouble::None,
            Some(1),
        ),
        t(
            node(
                "spot-1b-c7g",
                &[
                    (EKS_CAPACITY_TYPE, "spot"),
                    (ZONE, "us-east-1b"),
                    (INSTANCE_TYPE, "c7g.xlarge"),
                ],
                None,
                None,
            ),
            Spot,
            Trouble::None,
            Some(9),
        ),
        t(
            node(
                "spot-1c-m7g",
                &[
                    (EKS_CAPACITY_TYPE, "SPOT"),
                    (ZONE, "us-east-1c"),
                    (INSTANCE_TYPE, "m7g.large"),
                ],
                None,
                None,
            ),
            Spot,
            Trouble::None,
            None,
        ),
        t(pid, Spot, Trouble::None, Some(1)),
        t(
            node(
                "od-1a",
                &[
                    (EKS_CAPACITY_TYPE, "ON_DEMAND"),
                    (ZONE, "us-east-1a"),
                    (INSTANCE_TYPE, "m7g.large"),
                ],
                None,
                None,
            ),
            OnDemand,
            Trouble::None,
            None,
        ),
        t(
            node("no-labels", &[], None, None),
            Other,
            Trouble::None,
            None,
        ),
        t(
            node(
                "fargate-1a",
                &[(EKS_COMPUTE_TYPE, "fargate"), (ZONE, "us-east-1a")],
                None,
                None,
            ),
            Other,
            Trouble::None,
            None,
        ),
        t(
            node("interrupted", &spot_1a_m7g, Some(interruption), None),
            Spot,
            Trouble::Imminent,
            Some(6),
        ),
        t(
            node("rebalancing", &spot_1a_m7g, Some(rebalance), None),
            Spot,
            Trouble::Rebalancing,
            Some(6),
        ),
        t(
            node("planned", &spot_1a_m7g, Some(planned), None),
            Spot,
            Trouble::Rebalancing,
            Some(6),
        ),
        t(
            node("unreadable", &spot_1a_m7g, Some("garbage"), None),
            Spot,
            Trouble::Imminent,
            Some(6),
        ),
        t(
            node("tainted", &spot_1a_m7g, None, Some("NoSchedule")),
            Spot,
            Trouble::Imminent,
            Some(6),
        ),
        t(
            node(
                "od-prefer",
                &[(KARPENTER_CAPACITY_TYPE, "on-demand")],
                None,
                Some("PreferNoSchedule"),
            ),
            OnDemand,
            Trouble::Rebalancing,
            None,
        ),
    ];
    // The captured Nodes: spot m7g.large in us-east-1a / b / c.
    for (node, rank) in
        list(&FILTER_FULL["Nodes"]["items"])
            .into_iter()
            .zip([Some(6), Some(1), None])
    {
        all.push(t(node, Spot, Trouble::None, rank));
    }
    all
}

static TEMPLATES: LazyLock<Vec<Template>> = LazyLock::new(templates);

fn template_name(i: usize) -> String {
    TEMPLATES[i].node["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

fn entry(rank: u32, instance_type: &str) -> RankedType {
    RankedType {
        rank,
        instance_type: instance_type.into(),
        spot_usd_per_hour: 0.03,
        on_demand_usd_per_hour: 0.08,
        savings_percent: 62.5,
        vcpu: 2,
        memory_gib: 8.0,
        interruption_band: Some(1),
        score: 0.015,
    }
}

/// m7g.large: rank 6 in us-east-1a, 1 in us-east-1b; c7g.xlarge: 1 in a, 9 in b.
fn ranking() -> Ranking {
    let mut filler: Vec<RankedType> = (2..=5).map(|r| entry(r, &format!("x{r}.large"))).collect();
    let mut a = vec![entry(1, "c7g.xlarge")];
    a.append(&mut filler);
    a.push(entry(6, "m7g.large"));
    let mut b = vec![entry(1, "m7g.large")];
    b.extend((2..=8).map(|r| entry(r, &format!("y{r}.large"))));
    b.push(entry(9, "c7g.xlarge"));
    Ranking {
        schema_version: SCHEMA_VERSION.into(),
        computed_at: "2026-11-22T04:00:00Z".parse().unwrap(),
        source: "fuzz".into(),
        region: Some("us-east-1".into()),
        criteria: None,
        zones: BTreeMap::from([("us-east-1a".into(), a), ("us-east-1b".into(), b)]),
        unavailable: Vec::new(),
    }
}

const NAMESPACES: &[(&str, &[(&str, &str)])] = &[
    ("demo", &[(ENABLED, "true")]),
    ("od", &[(ENABLED, "true"), (CAPACITY, "on-demand")]),
    ("so", &[(ENABLED, " true"), (CAPACITY, "spot-only ")]),
    ("optout", &[(ENABLED, "false"), (CAPACITY, "on-demand")]),
    ("bad", &[(ENABLED, "yes"), (CAPACITY, "spot-maybe")]),
    ("plain", &[]),
];

struct Extender {
    runtime: tokio::runtime::Runtime,
    /// With the ranking, and without one.
    routers: [Router; 2],
}

impl Extender {
    fn new() -> Extender {
        let cluster = |ranked: bool| {
            let cluster = Cluster::new(None);
            let nodes: Vec<Node> = TEMPLATES
                .iter()
                .map(|t| serde_json::from_value(t.node.clone()).unwrap())
                .collect();
            cluster.replace_nodes(&nodes);
            for (name, annotations) in NAMESPACES {
                cluster.set_namespace(
                    name,
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                );
            }
            if ranked {
                cluster.set_ranking(Some(ranking()));
            }
            let metrics = Metrics::register(&mut Registry::default());
            router(AppState { cluster, metrics }, Limits::default())
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Extender {
            runtime,
            routers: [cluster(true), cluster(false)],
        }
    }

    fn post(&self, ranked: bool, verb: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let router = self.routers[usize::from(!ranked)].clone();
        self.runtime.block_on(async move {
            let request = Request::post(format!("/{verb}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, body.to_vec())
        })
    }
}

// ---- generated inputs --------------------------------------------------------------

/// One candidate: a name (known to the cache or not) or a Node object from a template
/// (its name kept, replaced, or removed).
#[derive(Debug, Clone)]
enum Candidate {
    Known(usize),
    Stranger(String),
}

#[derive(Debug, Clone)]
enum Renamed {
    Same,
    To(String),
    Nameless,
}

#[derive(Debug, Clone)]
enum Candidates {
    Names(Vec<Candidate>),
    Nodes(Vec<(usize, Renamed)>),
}

#[derive(Debug, Clone)]
struct PodSpec {
    /// The captured Pod (namespace `demo`, no annotations) instead of a generated one.
    fixture: bool,
    namespace: Option<&'static str>,
    enabled: Option<String>,
    capacity: Option<String>,
    daemonset: bool,
}

#[derive(Debug, Clone)]
struct Args {
    ranked: bool,
    pod: PodSpec,
    candidates: Candidates,
    /// Send the unused field as `null` (as the scheduler does) rather than leave it out.
    explicit_null: bool,
}

fn value(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(valid).prop_map(String::from),
        1 => select(valid).prop_map(|v| format!(" {v}\t")),
        1 => select(valid).prop_map(|v| v.to_uppercase()),
        1 => any::<String>(),
    ]
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        prop::bool::weighted(0.15),
        prop::option::of(select(
            &["demo", "od", "so", "optout", "bad", "plain", "ghost"][..],
        )),
        prop::option::of(value(&["true", "false"])),
        prop::option::of(value(&["spot-preferred", "spot-only", "on-demand"])),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(fixture, namespace, enabled, capacity, daemonset)| PodSpec {
                fixture,
                namespace,
                enabled,
                capacity,
                daemonset,
            },
        )
}

fn stranger() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9-]{1,20}",
        1 => Just(String::new()),
        1 => "[a-z]{253}",
        1 => any::<String>(),
    ]
}

fn candidate() -> impl Strategy<Value = Candidate> {
    let n = TEMPLATES.len();
    prop_oneof![
        4 => (0..n).prop_map(Candidate::Known),
        1 => stranger().prop_map(Candidate::Stranger),
    ]
}

fn renamed() -> impl Strategy<Value = Renamed> {
    prop_oneof![
        6 => Just(Renamed::Same),
        1 => stranger().prop_map(Renamed::To),
        1 => Just(Renamed::Nameless),
    ]
}

fn candidates() -> impl Strategy<Value = Candidates> {
    let n = TEMPLATES.len();
    prop_oneof![
        10 => prop::collection::vec(candidate(), 0..24).prop_map(Candidates::Names),
        1 => prop::collection::vec(candidate(), 0..2000).prop_map(Candidates::Names),
        10 => prop::collection::vec((0..n, renamed()), 0..12).prop_map(Candidates::Nodes),
    ]
}

fn args() -> impl Strategy<Value = Args> {
    (any::<bool>(), pod_spec(), candidates(), any::<bool>()).prop_map(
        |(ranked, pod, candidates, explicit_null)| Args {
            ranked,
            pod,
            candidates,
            explicit_null,
        },
    )
}

fn pod_json(spec: &PodSpec) -> Value {
    if spec.fixture {
        return FILTER_NAMES["Pod"].clone();
    }
    let mut meta = json!({"name": "p", "uid": "u"});
    if let Some(ns) = spec.namespace {
        meta["namespace"] = json!(ns);
    }
    let mut annotations = BTreeMap::new();
    if let Some(v) = &spec.enabled {
        annotations.insert(ENABLED, v.clone());
    }
    if let Some(v) = &spec.capacity {
        annotations.insert(CAPACITY, v.clone());
    }
    if !annotations.is_empty() {
        meta["annotations"] = json!(annotations);
    }
    if spec.daemonset {
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet",
            "name": "agent", "uid": "d", "controller": true}]);
    }
    json!({"metadata": meta, "spec": {"containers": [{"name": "c", "image": "i"}]}})
}

/// The request body, and the names of its candidates in order (`""` for a nameless node).
fn body(args: &Args) -> (Value, Vec<String>) {
    let mut body = json!({"Pod": pod_json(&args.pod)});
    let names: Vec<String>;
    match &args.candidates {
        Candidates::Names(list) => {
            names = list
                .iter()
                .map(|c| match c {
                    Candidate::Known(i) => template_name(*i),
                    Candidate::Stranger(s) => s.clone(),
                })
                .collect();
            body["NodeNames"] = json!(names);
            if args.explicit_null {
                body["Nodes"] = Value::Null;
            }
        }
        Candidates::Nodes(list) => {
            let items: Vec<Value> = list
                .iter()
                .map(|(i, rename)| {
                    let mut node = TEMPLATES[*i].node.clone();
                    match rename {
                        Renamed::Same => {}
                        Renamed::To(name) => node["metadata"]["name"] = json!(name),
                        Renamed::Nameless => {
                            node["metadata"].as_object_mut().unwrap().remove("name");
                        }
                    }
                    node
                })
                .collect();
            names = items
                .iter()
                .map(|n| n["metadata"]["name"].as_str().unwrap_or("").to_string())
                .collect();
            body["Nodes"] = json!({"metadata": {}, "items": items});
            if args.explicit_null {
                body["NodeNames"] = Value::Null;
            }
        }
    }
    (body, names)
}

// ---- oracles -----------------------------------------------------------------------

/// The template a name in the extender's cache stands for (a generated "stranger" may
/// hit one by chance).
fn known(name: &str) -> Option<&'static Template> {
    TEMPLATES
        .iter()
        .find(|t| t.node["metadata"]["name"] == name)
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// (enabled, capacity) the pod's policy resolves to: namespace, then pod; trimmed
/// values; invalid values skipped; DaemonSet pods get the defaults (not enabled).
fn policy(pod: &PodSpec) -> (bool, &'static str) {
    let (mut enabled, mut capacity) = (false, "spot-preferred");
    if pod.daemonset && !pod.fixture {
        return (enabled, capacity);
    }
    let namespace = if pod.fixture {
        Some("demo")
    } else {
        pod.namespace
    };
    let ns = NAMESPACES
        .iter()
        .find(|(n, _)| Some(*n) == namespace)
        .map(|(_, a)| *a)
        .unwrap_or(&[]);
    let ns_enabled = ns.iter().find(|(k, _)| *k == ENABLED).map(|(_, v)| *v);
    let ns_capacity = ns.iter().find(|(k, _)| *k == CAPACITY).map(|(_, v)| *v);
    let (pod_enabled, pod_capacity) = if pod.fixture {
        (None, None)
    } else {
        (pod.enabled.as_deref(), pod.capacity.as_deref())
    };
    for layer in [ns_enabled, pod_enabled].into_iter().flatten() {
        match layer.trim() {
            "true" => enabled = true,
            "false" => enabled = false,
            _ => {}
        }
    }
    for layer in [ns_capacity, pod_capacity].into_iter().flatten() {
        if let Some(c) = ["spot-preferred", "spot-only", "on-demand"]
            .into_iter()
            .find(|c| *c == layer.trim())
        {
            capacity = c;
        }
    }
    (enabled, capacity)
}

fn passes(t: &Template, (enabled, capacity): (bool, &str)) -> bool {
    if t.trouble == Trouble::Imminent {
        return false;
    }
    !(enabled
        && match capacity {
            "on-demand" => t.capacity == Capacity::Spot,
            "spot-only" => t.capacity != Capacity::Spot,
            _ => false,
        })
}

/// The documented score table (`shared::ranking::score`).
fn score(t: &Template, ranked: bool) -> i64 {
    if t.trouble != Trouble::None {
        return 0;
    }
    if !ranked {
        return 5;
    }
    match (t.capacity, t.rank) {
        (Capacity::Spot, Some(r)) => (10 - (i64::from(r) - 1)).max(3),
        (Capacity::Spot, None) => 2,
        _ => 1,
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, TestCaseError> {
    serde_json::from_slice(body).map_err(|e| {
        TestCaseError::fail(format!(
            "answer does not parse ({e}): {}",
            String::from_utf8_lossy(body)
        ))
    })
}

fn check(extender: &Extender, args: Args) -> Result<(), TestCaseError> {
    let (request, names) = body(&args);
    let bytes = serde_json::to_vec(&request).unwrap();
    let policy = policy(&args.pod);
    let input: BTreeSet<&str> = names.iter().map(String::as_str).collect();

    // Filter.
    let (status, answer) = extender.post(args.ranked, "filter", bytes.clone());
    prop_assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let result: ExtenderFilterResult = parse(&answer)?;
    prop_assert_eq!(&result.error, "");
    prop_assert!(result.failed_and_unresolvable_nodes.is_empty());
    let failed: BTreeSet<&str> = result.failed_nodes.keys().map(String::as_str).collect();
    prop_assert!(failed.is_subset(&input), "failed names not in the input");
    match &args.candidates {
        Candidates::Names(_) => {
            prop_assert!(result.nodes.is_none(), "Nodes answered to NodeNames");
            let kept = result.node_names.clone().unwrap_or_default();
            let expected: Vec<String> = names
                .iter()
                .filter(|n| known(n).is_some_and(|t| passes(t, policy)))
                .cloned()
                .collect();
            prop_assert_eq!(&kept, &expected, "kept names");
            for name in &names {
                let reason = result.failed_nodes.get(name).map(String::as_str);
                match known(name) {
                    None => prop_assert_eq!(reason, Some(REASON_UNKNOWN), "{}", name),
                    Some(t) if !passes(t, policy) => {
                        prop_assert!(reason.is_some(), "{} should fail", name)
                    }
                    Some(_) => prop_assert_eq!(reason, None, "{} should pass", name),
                }
            }
            let kept: BTreeSet<&str> = kept.iter().map(String::as_str).collect();
            prop_assert!(kept.is_disjoint(&failed), "a name both kept and failed");
            let union: BTreeSet<&str> = kept.union(&failed).copied().collect();
            prop_assert_eq!(union, input.clone(), "kept ∪ failed ≠ input");
        }
        Candidates::Nodes(generated) => {
            prop_assert!(result.node_names.is_none(), "NodeNames answered to Nodes");
            let kept: Vec<Value> = result
                .nodes
                .clone()
                .map(|l| l.items)
                .unwrap_or_default()
                .iter()
                .map(|n| serde_json::to_value(n).unwrap())
                .collect();
            let sent = list(&request["Nodes"]["items"]);
            let expected: Vec<Value> = generated
                .iter()
                .zip(&sent)
                .filter(|((i, _), _)| passes(&TEMPLATES[*i], policy))
                .map(|(_, n)| {
                    // Compare as the typed Node the extender decodes (drops nothing it keeps).
                    let node: Node = serde_json::from_value(n.clone()).unwrap();
                    serde_json::to_value(node).unwrap()
                })
                .collect();
            prop_assert!(
                kept == expected,
                "kept nodes differ from the input less the failures"
            );
            let kept_names: BTreeSet<&str> = kept
                .iter()
                .map(|n| n["metadata"]["name"].as_str().unwrap_or(""))
                .collect();
            for ((i, _), name) in generated.iter().zip(&names) {
                if !passes(&TEMPLATES[*i], policy) {
                    prop_assert!(failed.contains(name.as_str()), "{} should fail", name);
                }
            }
            let union: BTreeSet<&str> = kept_names.union(&failed).copied().collect();
            prop_assert_eq!(union, input.clone(), "kept ∪ failed ≠ input");
        }
    }

    // Prioritize.
    let (status, answer) = extender.post(args.ranked, "prioritize", bytes);
    prop_assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let scores: Vec<HostPriority> = parse(&answer)?;
    let hosts: Vec<&str> = scores.iter().map(|h| h.host.as_str()).collect();
    let expected_hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    prop_assert_eq!(hosts, expected_hosts, "one score per input, in order");
    let expected: Vec<i64> = match &args.candidates {
        Candidates::Names(_) => names
            .iter()
            .map(|name| known(name).map_or(0, |t| score(t, args.ranked)))
            .collect(),
        Candidates::Nodes(list) => list
            .iter()
            .map(|(i, _)| score(&TEMPLATES[*i], args.ranked))
            .collect(),
    };
    let got: Vec<i64> = scores.iter().map(|h| h.score).collect();
    prop_assert_eq!(got, expected, "scores");
    Ok(())
}

#[test]
fn fuzz_filter_and_prioritize() {
    let extender = Extender::new();
    fuzz("extender-verbs", args(), |args| check(&extender, args));
}

// ---- malformed bodies ---------------------------------------------------------------

fn broken_args() -> impl Strategy<Value = Vec<u8>> {
    let paths: &[&[&str]] = &[
        &["Pod"],
        &["Pod", "metadata"],
        &["Pod", "metadata", "namespace"],
        &["Pod", "metadata", "annotations"],
        &["Pod", "metadata", "ownerReferences"],
        &["NodeNames"],
        &["Nodes"],
        &["Nodes", "items"],
    ];
    let garbage = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,8}".prop_map(Value::from),
        Just(json!([1, "a", null, {}])),
        Just(json!({"x": 1})),
        Just(json!([{"metadata": 5}])),
        Just(json!({"items": [{"metadata": {"name": 7}}]})),
    ];
    (any::<bool>(), select(paths), prop::option::of(garbage)).prop_map(
        |(full, path, replacement)| {
            let mut v = if full { &*FILTER_FULL } else { &*FILTER_NAMES }.clone();
            let (last, parents) = path.split_last().unwrap();
            let mut target = &mut v;
            for p in parents {
                target = &mut target[*p];
            }
            if let Some(object) = target.as_object_mut() {
                match replacement {
                    Some(r) => {
                        object.insert(last.to_string(), r);
                    }
                    None => {
                        object.remove(*last);
                    }
                }
            }
            serde_json::to_vec(&v).unwrap()
        },
    )
}

fn malformed() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let full = serde_json::to_vec(&*FILTER_FULL).unwrap();
    let cut = full.clone();
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        ".{0,64}".prop_map(String::into_bytes),
        (0..full.len()).prop_map(move |n| cut[..n].to_vec()),
        Just(br#"{"Pod":{"metadata":{}},"Nodes":null,"NodeNames":null}"#.to_vec()),
        Just(br#"{"Pod":{"metadata":{}}}"#.to_vec()),
        broken_args(),
    ];
    (any::<bool>(), bodies)
}

#[test]
fn fuzz_malformed_bodies() {
    let extender = Extender::new();
    fuzz("extender-malformed", malformed(), |(prioritize, body)| {
        let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
        let verb = if prioritize { "prioritize" } else { "filter" };
        let (status, answer) = extender.post(true, verb, body);
        let text = String::from_utf8_lossy(&answer);
        prop_assert!(!status.is_server_error(), "{}: {}", status, text);
        prop_assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{}: {}",
            status,
            text
        );
        if !is_json {
            prop_assert!(
                status.is_client_error(),
                "not JSON, yet {}: {}",
                status,
                text
            );
        }
        if status == StatusCode::OK {
            if prioritize {
                let scores: Vec<HostPriority> = parse(&answer)?;
                prop_assert!(scores.iter().all(|h| (0..=10).contains(&h.score)));
            } else {
                let _: ExtenderFilterResult = parse(&answer)?;
            }
        }
        Ok(())
    });
}
