//! Fuzz target: AdmissionReview → `POST /mutate` (the real router) → JSONPatch applied
//! to the pod, as the API server applies it.
//!
//! Inputs are the captured Pod CREATE (`testdata/fixtures/admission/`) and a minimal
//! pod, each with generated edits: labels, policy annotations with valid and invalid
//! values, the user's nodeSelector, required and preferred node affinity, tolerations,
//! schedulerName, owner references (replicated, DaemonSet, others), Fargate selectors,
//! Fargate's scheduler and Fargate profile labels, mirror pods; over namespaces with
//! every kind of policy (`capacity: fargate` included, covered by a Fargate profile or
//! not), three webhook configurations, and requests that are out of scope (other
//! operations, kinds, subresources). Invariants, per input:
//! - the answer is HTTP 200, an allowed AdmissionReview with the request's uid, never an
//!   internal error (a caught panic);
//! - out of scope or not opted in: no patch;
//! - the patch applies to the request's raw object and the result deserializes as a Pod;
//! - spotkube only adds: the user's nodeSelector, tolerations, affinity terms (their
//!   expressions), spread constraints, labels, owners, own annotations and every other
//!   field are still there, unchanged and in order; a chosen scheduler is kept; the
//!   only labels added are those of the first Fargate profile covering the namespace,
//!   for `capacity: fargate`;
//! - Fargate-bound, DaemonSet and mirror pods keep their spec byte for byte, except
//!   that a Fargate-bound pod may get `schedulerName: fargate-scheduler` (for
//!   `capacity: fargate`), and so does every pod the patch leaves Fargate-bound: nothing
//!   spot is added to a pod bound for Fargate;
//! - a second admission of the patched pod gives no patch (idempotence).
//!
//! A second property sends malformed bodies (arbitrary bytes, broken JSON, reviews with
//! fields removed or of the wrong type): never a 5xx, and a 200 is an allowed review.
//!
//! Cases: `SPOTKUBE_FUZZ_CASES` (default: proptest's `PROPTEST_CASES`, else 256);
//! seed: `SPOTKUBE_FUZZ_SEED` (default random, printed). `make fuzz` runs 10⁶.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ObjectMeta;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};
use spotkube_shared::annotations::{
    CAPACITY, ENABLED, FALLBACK, MUTATED_BY, PROTECTION, SPREAD, SURGE, SURGE_HOLD,
};
use spotkube_shared::fargate::{FARGATE_SCHEDULER, FargateProfile, matches_any, profile_for};
use spotkube_shared::labels::{EKS_CAPACITY_TYPE, EKS_COMPUTE_TYPE, KARPENTER_CAPACITY_TYPE, ZONE};
use spotkube_shared::policy::Policy;
use spotkube_webhook::AdmissionState;
use spotkube_webhook::metrics::Metrics;
use spotkube_webhook::mutate::{MutationConfig, parse_toleration};
use spotkube_webhook::namespaces::NamespaceCache;
use tower::ServiceExt;

// The harness (count, seed, no failure files) every fuzz target shares.
#[path = "../../testdata/fuzz_harness.rs"]
mod fuzz_harness;
use fuzz_harness::fuzz;

// ---- the webhook under test --------------------------------------------------------

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/fixtures/admission/pod-create-from-deployment.json"
);

static REVIEW: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap());

fn namespace(name: &str, annotations: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: (!annotations.is_empty()).then(|| {
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Namespaces the webhook knows, and whether each opts in. "ghost" and "default" are
/// unknown to the cache.
const NAMESPACES: &[(&str, &[(&str, &str)])] = &[
    ("demo", &[(ENABLED, "true")]),
    (
        "policy-od",
        &[
            (ENABLED, " true "),
            (CAPACITY, "on-demand"),
            (SPREAD, "capacity-types"),
        ],
    ),
    (
        "policy-so",
        &[(ENABLED, "true"), (CAPACITY, "spot-only"), (SPREAD, "none")],
    ),
    ("optout", &[(ENABLED, "false"), (CAPACITY, "spot-only")]),
    // Covered by a Fargate profile in two of the three configurations.
    ("shop", &[(ENABLED, "true"), (CAPACITY, "fargate")]),
    // Covered by none.
    (
        "policy-fg",
        &[(ENABLED, "true"), (CAPACITY, "fargate"), (SPREAD, "zones")],
    ),
    ("bad", &[(ENABLED, "yes"), (CAPACITY, "sometimes")]),
    ("plain", &[]),
];
const NAMESPACE_NAMES: &[&str] = &[
    "demo",
    "policy-od",
    "policy-so",
    "optout",
    "shop",
    "policy-fg",
    "bad",
    "plain",
    "ghost",
    "default",
];

/// The label key of the Fargate profiles below.
const PROFILE_KEY: &str = "spotkube.io/fargate";

/// Pod labels that match (or contradict) the profiles of [`configs`].
const PROFILE_LABEL_SETS: &[&[(&str, &str)]] = &[
    &[(PROFILE_KEY, "true")],
    &[(PROFILE_KEY, "true"), ("app", "web")],
    &[(PROFILE_KEY, "spot"), ("tier", "x"), ("app", "web")],
    &[(PROFILE_KEY, "spot")],
    &[(PROFILE_KEY, "false"), ("tier", "y"), ("app", "web")],
];

fn profile(s: &str) -> FargateProfile {
    s.parse().unwrap()
}

/// Three webhook configurations: as the tests ship it (with Fargate profiles), the
/// defaults (no tolerations, no scheduler, no profiles) and custom labels / tolerations
/// / weight / topology key / profiles.
fn configs() -> Vec<MutationConfig> {
    vec![
        MutationConfig {
            tolerations: vec![parse_toleration("spot=true:NoSchedule").unwrap()],
            scheduler_name: Some("spotkube-scheduler".into()),
            fargate_profiles: vec![
                profile("shop,demo:spotkube.io/fargate=true"),
                profile("sh*:spotkube.io/fargate=true,app=web"),
            ],
            ..MutationConfig::default()
        },
        MutationConfig::default(),
        MutationConfig {
            spot_labels: vec![("pool".into(), "spot".into())],
            preferred_weight: 80,
            tolerations: vec![
                parse_toleration("spot:NoExecute").unwrap(),
                parse_toleration("other=x:PreferNoSchedule").unwrap(),
            ],
            scheduler_name: Some("spotkube-scheduler".into()),
            capacity_topology_key: "node.example.com/capacity".into(),
            mutated_by: "spotkube-webhook/fuzz".into(),
            fargate_profiles: vec![
                profile("*-od,s*:spotkube.io/fargate=spot,tier=x"),
                profile("demo:spotkube.io/fargate=true"),
            ],
        },
    ]
}

struct Webhook {
    runtime: tokio::runtime::Runtime,
    routers: Vec<Router>,
}

impl Webhook {
    fn new() -> Webhook {
        let namespaces: Vec<Namespace> = NAMESPACES
            .iter()
            .map(|(name, annotations)| namespace(name, annotations))
            .collect();
        let routers = configs()
            .into_iter()
            .map(|config| {
                let state = Arc::new(AdmissionState {
                    config,
                    defaults: Policy::default(),
                    namespaces: NamespaceCache::fixed(namespaces.clone()),
                    metrics: Metrics::register(&mut Registry::default()),
                });
                spotkube_webhook::router(state, spotkube_webhook::DEFAULT_MAX_BODY_BYTES)
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Webhook { runtime, routers }
    }

    /// `POST /mutate` through the real router: status and body.
    fn post(&self, config: usize, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let router = self.routers[config].clone();
        self.runtime.block_on(async move {
            let request = Request::post("/mutate")
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

/// What an input does to one field of the base pod.
#[derive(Debug, Clone)]
enum Edit<T> {
    Keep,
    Remove,
    /// `null`, as some clients send an unset field.
    Null,
    Set(T),
}

fn edit<T: std::fmt::Debug + Clone + 'static>(
    set: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Edit<T>> {
    prop_oneof![
        4 => Just(Edit::Keep),
        2 => Just(Edit::Remove),
        1 => Just(Edit::Null),
        6 => set.prop_map(Edit::Set),
    ]
    .boxed()
}

fn apply_edit(object: &mut Map<String, Value>, key: &str, edit: &Edit<Value>) {
    match edit {
        Edit::Keep => {}
        Edit::Remove => {
            object.remove(key);
        }
        Edit::Null => {
            object.insert(key.to_string(), Value::Null);
        }
        Edit::Set(v) => {
            object.insert(key.to_string(), v.clone());
        }
    }
}

fn short() -> impl Strategy<Value = String> + Clone {
    "[a-z0-9]{0,6}"
}

fn label_key() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        select(
            &[
                "app",
                "tier",
                "pod-template-hash",
                "controller-revision-hash",
                "statefulset.kubernetes.io/pod-name",
                "apps.kubernetes.io/pod-index",
                PROFILE_KEY,
            ][..]
        )
        .prop_map(String::from),
        "[a-z]{1,5}(\\.io/[a-z]{1,5})?",
    ]
}

fn string_map<K, V>(keys: K, values: V, max: usize) -> impl Strategy<Value = Value>
where
    K: Strategy<Value = String>,
    V: Strategy<Value = String>,
{
    prop::collection::btree_map(keys, values, 0..max).prop_map(|m| json!(m))
}

/// A policy annotation value: valid, valid with spaces, wrong case, or anything.
fn policy_value(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(valid).prop_map(String::from),
        1 => select(valid).prop_map(|v| format!(" {v} ")),
        1 => select(valid).prop_map(|v| v.to_uppercase()),
        1 => any::<String>(),
    ]
}

fn annotations() -> impl Strategy<Value = Value> {
    let policy = (
        prop::option::of(policy_value(&["true", "false"])),
        prop::option::of(policy_value(&[
            "spot-preferred",
            "spot-only",
            "on-demand",
            "fargate",
        ])),
        prop::option::of(policy_value(&["fargate", "on-demand", "none"])),
        prop::option::of(policy_value(&["auto", "restart", "scale", "off"])),
        prop::option::of(policy_value(&["5m", "90s", "1h"])),
        prop::option::of(policy_value(&["zones", "capacity-types", "none"])),
    );
    let ours = (
        prop::option::of(policy_value(&[
            "spot-preferred",
            "spot-only",
            "on-demand",
            "fargate",
        ])),
        prop::option::of(policy_value(&["spotkube-webhook/0.1.0", "someone-else"])),
        prop::option::of(short()),
    );
    let others = prop::collection::btree_map("[a-z]{1,5}\\.example/[a-z]{1,5}", ".{0,8}", 0..3);
    (policy, ours, others).prop_map(|(policy, ours, others)| {
        let mut map: BTreeMap<String, String> = others;
        let (enabled, capacity, fallback, surge, hold, spread) = policy;
        for (key, value) in [
            (ENABLED, enabled),
            (CAPACITY, capacity),
            (FALLBACK, fallback),
            (SURGE, surge),
            (SURGE_HOLD, hold),
            (SPREAD, spread),
            (PROTECTION, ours.0),
            (MUTATED_BY, ours.1),
            (spotkube_shared::pod::MIRROR_ANNOTATION, ours.2),
        ] {
            if let Some(value) = value {
                map.insert(key.to_string(), value);
            }
        }
        json!(map)
    })
}

const NODE_KEYS: &[&str] = &[
    EKS_COMPUTE_TYPE,
    KARPENTER_CAPACITY_TYPE,
    EKS_CAPACITY_TYPE,
    "pool",
    "kubernetes.io/arch",
    ZONE,
];
const NODE_VALUES: &[&str] = &[
    "fargate",
    "spot",
    "SPOT",
    "on-demand",
    "ON_DEMAND",
    "arm64",
    "us-east-1a",
];

fn node_key() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        5 => select(NODE_KEYS).prop_map(String::from),
        1 => "[a-z]{1,6}",
    ]
}

fn node_value() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        5 => select(NODE_VALUES).prop_map(String::from),
        1 => short(),
    ]
}

fn requirement(key: impl Strategy<Value = String>) -> impl Strategy<Value = Value> {
    (
        key,
        select(&["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"][..]),
        prop::option::of(prop::collection::vec(node_value(), 0..3)),
    )
        .prop_map(|(key, operator, values)| {
            let mut r = json!({"key": key, "operator": operator});
            if let Some(values) = values {
                r["values"] = json!(values);
            }
            r
        })
}

fn term() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(requirement(node_key()), 0..3)),
        prop::option::of(prop::collection::vec(
            requirement(Just("metadata.name".to_string())),
            0..2,
        )),
    )
        .prop_map(|(expressions, fields)| {
            let mut t = json!({});
            if let Some(e) = expressions {
                t["matchExpressions"] = json!(e);
            }
            if let Some(f) = fields {
                t["matchFields"] = json!(f);
            }
            t
        })
}

fn affinity() -> impl Strategy<Value = Value> {
    let required = prop::option::of(prop::collection::vec(term(), 0..3));
    let preferred = prop::option::of(prop::collection::vec(
        (1..=100i32, term())
            .prop_map(|(weight, preference)| json!({"weight": weight, "preference": preference})),
        0..3,
    ));
    (
        prop::option::of((required, preferred)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(node, with_required, anti)| {
            let mut a = json!({});
            if let Some((required, preferred)) = node {
                let mut na = json!({});
                if let (Some(terms), true) = (required, with_required) {
                    na["requiredDuringSchedulingIgnoredDuringExecution"] =
                        json!({"nodeSelectorTerms": terms});
                }
                if let Some(p) = preferred {
                    na["preferredDuringSchedulingIgnoredDuringExecution"] = json!(p);
                }
                a["nodeAffinity"] = na;
            }
            if anti {
                a["podAntiAffinity"] = json!({"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "podAffinityTerm": {"topologyKey": ZONE,
                        "labelSelector": {"matchLabels": {"app": "web"}}}}
                ]});
            }
            a
        })
}

fn toleration() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![
            4 => select(&["spot", "", "other", "node.kubernetes.io/not-ready", "spotkube.io/interruption"][..])
                .prop_map(String::from),
            1 => short(),
        ]),
        prop::option::of(select(&["Equal", "Exists"][..])),
        prop::option::of(prop_oneof![
            select(&["true", "x", ""][..]).prop_map(String::from),
            short()
        ]),
        prop::option::of(select(&["NoSchedule", "PreferNoSchedule", "NoExecute"][..])),
        prop::option::of(0..600i64),
    )
        .prop_map(|(key, operator, value, effect, seconds)| {
            let mut t = json!({});
            if let Some(k) = key {
                t["key"] = json!(k);
            }
            if let Some(o) = operator {
                t["operator"] = json!(o);
            }
            if let Some(v) = value {
                t["value"] = json!(v);
            }
            if let Some(e) = effect {
                t["effect"] = json!(e);
            }
            if let Some(s) = seconds {
                t["tolerationSeconds"] = json!(s);
            }
            t
        })
}

fn owner() -> impl Strategy<Value = Value> {
    (
        select(
            &[
                "ReplicaSet",
                "StatefulSet",
                "DaemonSet",
                "ReplicationController",
                "Job",
                "Node",
            ][..],
        ),
        prop::option::of(any::<bool>()),
        short(),
    )
        .prop_map(|(kind, controller, name)| {
            let mut o = json!({"apiVersion": "apps/v1", "kind": kind, "name": format!("w{name}"), "uid": "u-1"});
            if let Some(c) = controller {
                o["controller"] = json!(c);
            }
            o
        })
}

fn spread() -> impl Strategy<Value = Value> {
    (
        select(&[ZONE, KARPENTER_CAPACITY_TYPE, "kubernetes.io/hostname"][..]),
        1..3i32,
        select(&["DoNotSchedule", "ScheduleAnyway"][..]),
    )
        .prop_map(|(key, skew, when)| {
            json!({"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when,
                   "labelSelector": {"matchLabels": {"app": "web"}}})
        })
}

/// Edits of the pod's metadata and spec.
#[derive(Debug, Clone)]
struct PodEdits {
    minimal_base: bool,
    labels: Edit<Value>,
    annotations: Edit<Value>,
    owners: Edit<Value>,
    node_selector: Edit<Value>,
    affinity: Edit<Value>,
    tolerations: Edit<Value>,
    scheduler: Edit<Value>,
    spread: Edit<Value>,
}

fn pod_edits() -> impl Strategy<Value = PodEdits> {
    (
        prop::bool::weighted(0.2),
        edit(prop_oneof![
            3 => string_map(
                label_key(),
                prop_oneof![
                    3 => short(),
                    1 => select(&["true", "spot", "web", "x"][..]).prop_map(String::from),
                ],
                4,
            ),
            1 => select(PROFILE_LABEL_SETS).prop_map(|pairs| {
                json!(pairs.iter().copied().collect::<BTreeMap<&str, &str>>())
            }),
        ]),
        edit(annotations()),
        edit(prop::collection::vec(owner(), 0..3).prop_map(Value::from)),
        edit(string_map(node_key(), node_value(), 3)),
        edit(affinity()),
        edit(prop::collection::vec(toleration(), 0..4).prop_map(Value::from)),
        edit(
            select(
                &[
                    "default-scheduler",
                    "",
                    "my-scheduler",
                    "spotkube-scheduler",
                    FARGATE_SCHEDULER,
                ][..],
            )
            .prop_map(Value::from),
        ),
        edit(prop::collection::vec(spread(), 0..2).prop_map(Value::from)),
    )
        .prop_map(
            |(
                minimal_base,
                labels,
                annotations,
                owners,
                node_selector,
                affinity,
                tolerations,
                scheduler,
                spread,
            )| PodEdits {
                minimal_base,
                labels,
                annotations,
                owners,
                node_selector,
                affinity,
                tolerations,
                scheduler,
                spread,
            },
        )
}

/// The request around the pod.
#[derive(Debug, Clone)]
struct Envelope {
    config: usize,
    namespace: &'static str,
    /// `request.namespace` absent: the pod's own (or `default`) is used.
    namespace_on_pod_only: bool,
    operation: &'static str,
    kind: (&'static str, &'static str),
    sub_resource: Option<&'static str>,
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        0..configs().len(),
        select(NAMESPACE_NAMES),
        prop::bool::weighted(0.1),
        prop_oneof![
            12 => Just("CREATE"),
            1 => select(&["UPDATE", "DELETE", "CONNECT"][..]),
        ],
        prop_oneof![
            12 => Just(("", "Pod")),
            1 => select(&[("apps", "Pod"), ("", "ConfigMap")][..]),
        ],
        prop_oneof![
            12 => Just(None),
            1 => select(&["status", "binding"][..]).prop_map(Some),
        ],
    )
        .prop_map(
            |(config, namespace, namespace_on_pod_only, operation, kind, sub_resource)| Envelope {
                config,
                namespace,
                namespace_on_pod_only,
                operation,
                kind,
                sub_resource,
            },
        )
}

fn base_pod(minimal: bool) -> Value {
    if minimal {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "x-"},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    } else {
        REVIEW["request"]["object"].clone()
    }
}

fn build_pod(edits: &PodEdits, namespace: &str) -> Value {
    let mut pod = base_pod(edits.minimal_base);
    let metadata = pod["metadata"].as_object_mut().unwrap();
    metadata.insert("namespace".into(), json!(namespace));
    apply_edit(metadata, "labels", &edits.labels);
    apply_edit(metadata, "annotations", &edits.annotations);
    apply_edit(metadata, "ownerReferences", &edits.owners);
    let spec = pod["spec"].as_object_mut().unwrap();
    apply_edit(spec, "nodeSelector", &edits.node_selector);
    apply_edit(spec, "affinity", &edits.affinity);
    apply_edit(spec, "tolerations", &edits.tolerations);
    apply_edit(spec, "schedulerName", &edits.scheduler);
    apply_edit(spec, "topologySpreadConstraints", &edits.spread);
    pod
}

fn review(envelope: &Envelope, pod: &Value) -> Value {
    let mut review = REVIEW.clone();
    let request = review["request"].as_object_mut().unwrap();
    request.insert("object".into(), pod.clone());
    if envelope.namespace_on_pod_only {
        request.remove("namespace");
    } else {
        request.insert("namespace".into(), json!(envelope.namespace));
    }
    request.insert("operation".into(), json!(envelope.operation));
    let (group, kind) = envelope.kind;
    request.insert(
        "kind".into(),
        json!({"group": group, "version": "v1", "kind": kind}),
    );
    if let Some(sub) = envelope.sub_resource {
        request.insert("subResource".into(), json!(sub));
    }
    review
}

// ---- oracles -----------------------------------------------------------------------

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| v.get(k).unwrap_or(&Value::Null))
}

/// An array field, absent or null read as empty.
fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn is_prefix(prefix: &[Value], of: &[Value]) -> bool {
    of.len() >= prefix.len() && of[..prefix.len()] == *prefix
}

/// `spotkube.io/enabled` as policy resolution reads it (trimmed `true` / `false`).
fn enabled_value(annotations: &Value) -> Option<bool> {
    match annotations.get(ENABLED)?.as_str()?.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Whether spotkube manages the pod: pod annotation over namespace annotation, off by
/// default. Worked out here from the inputs, not with the webhook's resolution.
fn opted_in(envelope: &Envelope, pod: &Value) -> bool {
    // The pod carries the request's namespace too, so either source names it.
    let ns = NAMESPACES
        .iter()
        .find(|(name, _)| *name == envelope.namespace)
        .and_then(|(_, a)| {
            let map: BTreeMap<&str, &str> = a.iter().copied().collect();
            enabled_value(&json!(map))
        });
    enabled_value(get(pod, &["metadata", "annotations"]))
        .or(ns)
        .unwrap_or(false)
}

fn in_scope(envelope: &Envelope) -> bool {
    envelope.operation == "CREATE"
        && envelope.kind == ("", "Pod")
        && envelope.sub_resource.is_none()
}

/// Fargate-bound (selector or a required `In fargate`, Fargate's scheduler, or labels
/// matching one of `profiles` in `namespace`), DaemonSet-controlled or mirror.
fn placed_elsewhere(pod: &Value, namespace: &str, profiles: &[FargateProfile]) -> bool {
    fargate_bound(pod, namespace, profiles) || node_pinned(pod)
}

fn node_pinned(pod: &Value) -> bool {
    let daemonset = list(get(pod, &["metadata", "ownerReferences"]))
        .iter()
        .any(|o| o["kind"] == "DaemonSet" && o["controller"] == true);
    let mirror = get(
        pod,
        &[
            "metadata",
            "annotations",
            spotkube_shared::pod::MIRROR_ANNOTATION,
        ],
    ) != &Value::Null;
    daemonset || mirror
}

/// The pod's labels, absent or null read as none.
fn labels_of(pod: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(get(pod, &["metadata", "labels"]).clone()).unwrap_or_default()
}

fn fargate_bound(pod: &Value, namespace: &str, profiles: &[FargateProfile]) -> bool {
    let spec = &pod["spec"];
    let scheduler = spec["schedulerName"] == FARGATE_SCHEDULER;
    let profile = matches_any(profiles, namespace, &labels_of(pod));
    let fargate_selector = get(spec, &["nodeSelector", EKS_COMPUTE_TYPE]) == "fargate";
    let terms = list(get(
        spec,
        &[
            "affinity",
            "nodeAffinity",
            "requiredDuringSchedulingIgnoredDuringExecution",
            "nodeSelectorTerms",
        ],
    ));
    let fargate_term = terms.iter().any(|t| {
        list(&t["matchExpressions"]).iter().any(|e| {
            e["key"] == EKS_COMPUTE_TYPE
                && e["operator"] == "In"
                && list(&e["values"]).iter().any(|v| v == "fargate")
        })
    });
    fargate_selector || fargate_term || scheduler || profile
}

struct Answer {
    patch: Option<json_patch::Patch>,
    warnings: Vec<String>,
}

fn answer(status: StatusCode, body: &[u8], uid: &Value) -> Result<Answer, TestCaseError> {
    let text = String::from_utf8_lossy(body);
    prop_assert_eq!(status, StatusCode::OK, "body: {}", text);
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("answer is not JSON ({e}): {text}")))?;
    prop_assert_eq!(&v["apiVersion"], "admission.k8s.io/v1");
    prop_assert_eq!(&v["kind"], "AdmissionReview");
    let r = &v["response"];
    prop_assert_eq!(&r["uid"], uid);
    prop_assert_eq!(&r["allowed"], true, "never blocks a pod: {}", text);
    let warnings: Vec<String> = list(&r["warnings"])
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_string())
        .collect();
    let patch = match r.get("patch") {
        None => {
            prop_assert!(r.get("patchType").is_none(), "{}", text);
            None
        }
        Some(p) => {
            use base64::Engine as _;
            prop_assert_eq!(&r["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p.as_str().unwrap_or_default())
                .map_err(|e| TestCaseError::fail(format!("patch is not base64: {e}")))?;
            Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| TestCaseError::fail(format!("patch is not a JSONPatch: {e}")))?,
            )
        }
    };
    Ok(Answer { patch, warnings })
}

/// Everything the user set is still there: spotkube only adds. `added_labels`: the
/// labels it may add (a Fargate profile's), each with its value.
fn only_added(
    before: &Value,
    after: &Value,
    added_labels: Option<&BTreeMap<String, String>>,
) -> Result<(), TestCaseError> {
    // Top level: only metadata and spec may change.
    for (key, value) in before.as_object().unwrap() {
        if key != "metadata" && key != "spec" {
            prop_assert_eq!(&after[key], value, "{} changed", key);
        }
    }
    // Metadata: only spotkube's two annotations may be added or set, and a Fargate
    // profile's labels added.
    let (bm, am) = (&before["metadata"], &after["metadata"]);
    for (key, value) in bm.as_object().unwrap() {
        if key != "annotations" && key != "labels" {
            prop_assert_eq!(&am[key], value, "metadata.{} changed", key);
        }
    }
    let (bl, al) = (labels_of(before), labels_of(after));
    if bl != al {
        let Some(added) = added_labels else {
            return Err(TestCaseError::fail(format!(
                "labels changed: {bl:?} → {al:?}"
            )));
        };
        let mut expected = bl.clone();
        expected.extend(added.clone());
        prop_assert_eq!(&al, &expected, "labels: only the profile's are added");
        for (key, value) in &bl {
            prop_assert_eq!(al.get(key), Some(value), "label {} changed", key);
        }
    }
    let ours = [PROTECTION, MUTATED_BY];
    let empty = Map::new();
    let (ba, aa) = (
        bm["annotations"].as_object().unwrap_or(&empty),
        am["annotations"].as_object().unwrap_or(&empty),
    );
    for (key, value) in ba {
        if !ours.contains(&key.as_str()) {
            prop_assert_eq!(aa.get(key), Some(value), "annotation {} changed", key);
        }
    }
    for key in aa.keys() {
        prop_assert!(
            ba.contains_key(key) || ours.contains(&key.as_str()),
            "annotation {} added",
            key
        );
    }
    // Spec: four fields may grow, schedulerName may be set; nothing else moves.
    let (bs, as_) = (&before["spec"], &after["spec"]);
    let growing = [
        "affinity",
        "tolerations",
        "topologySpreadConstraints",
        "schedulerName",
    ];
    for (key, value) in bs.as_object().unwrap() {
        if !growing.contains(&key.as_str()) {
            prop_assert_eq!(&as_[key], value, "spec.{} changed", key);
        }
    }
    for key in as_.as_object().unwrap().keys() {
        prop_assert!(
            bs.get(key).is_some() || growing.contains(&key.as_str()),
            "spec.{} added",
            key
        );
    }
    prop_assert_eq!(&as_["nodeSelector"], &bs["nodeSelector"], "nodeSelector");
    prop_assert!(
        is_prefix(&list(&bs["tolerations"]), &list(&as_["tolerations"])),
        "tolerations: {} → {}",
        bs["tolerations"],
        as_["tolerations"]
    );
    prop_assert!(
        is_prefix(
            &list(&bs["topologySpreadConstraints"]),
            &list(&as_["topologySpreadConstraints"])
        ),
        "topologySpreadConstraints"
    );
    match bs["schedulerName"].as_str() {
        None | Some("") | Some("default-scheduler") => {}
        Some(chosen) => prop_assert_eq!(&as_["schedulerName"], chosen),
    }
    let (baff, aaff) = (&bs["affinity"], &as_["affinity"]);
    if let Some(b) = baff.as_object() {
        for (key, value) in b {
            if key != "nodeAffinity" {
                prop_assert_eq!(&aaff[key], value, "affinity.{} changed", key);
            }
        }
    }
    let (bna, ana) = (&baff["nodeAffinity"], &aaff["nodeAffinity"]);
    let pref = "preferredDuringSchedulingIgnoredDuringExecution";
    prop_assert!(
        is_prefix(&list(&bna[pref]), &list(&ana[pref])),
        "preferred terms: {} → {}",
        bna[pref],
        ana[pref]
    );
    let terms = |na: &Value| {
        list(get(
            na,
            &[
                "requiredDuringSchedulingIgnoredDuringExecution",
                "nodeSelectorTerms",
            ],
        ))
    };
    let (bt, at) = (terms(bna), terms(ana));
    if !bt.is_empty() {
        // Required terms are ORed: a term added beside the user's would widen them.
        prop_assert_eq!(bt.len(), at.len(), "required terms: {:?} → {:?}", bt, at);
        for (b, a) in bt.iter().zip(&at) {
            prop_assert_eq!(&a["matchFields"], &b["matchFields"], "matchFields");
            prop_assert!(
                is_prefix(&list(&b["matchExpressions"]), &list(&a["matchExpressions"])),
                "expressions of a required term: {} → {}",
                b,
                a
            );
        }
    }
    Ok(())
}

fn check_mutation(
    webhook: &Webhook,
    (envelope, edits): (Envelope, PodEdits),
) -> Result<(), TestCaseError> {
    let pod = build_pod(&edits, envelope.namespace);
    let request = review(&envelope, &pod);
    let uid = &request["request"]["uid"];
    let (status, body) = webhook.post(envelope.config, serde_json::to_vec(&request).unwrap());
    let first = answer(status, &body, uid)?;
    prop_assert!(
        !first.warnings.iter().any(|w| w.contains("internal error")
            || w.contains("could not")
            || w.contains("without an object")),
        "internal error: {:?}",
        first.warnings
    );
    let Some(patch) = first.patch else {
        return Ok(());
    };
    PATCHED.fetch_add(1, Ordering::Relaxed);
    prop_assert!(
        in_scope(&envelope) && opted_in(&envelope, &pod),
        "patched a request out of scope or not opted in"
    );
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch)
        .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}")))?;
    if let Err(e) = serde_json::from_value::<Pod>(patched.clone()) {
        return Err(TestCaseError::fail(format!(
            "patched object is not a Pod: {e}"
        )));
    }
    let ann = get(&patched, &["metadata", "annotations"]);
    let protection = ann[PROTECTION].as_str();
    prop_assert!(
        matches!(
            protection,
            Some("spot-preferred" | "spot-only" | "on-demand" | "fargate")
        ),
        "protection annotation: {}",
        ann
    );
    prop_assert!(ann[MUTATED_BY].is_string());
    // The namespace the webhook reads: the request's, else the pod's (the same here).
    let namespace = envelope.namespace;
    let profiles = &configs()[envelope.config].fargate_profiles;
    let profile_labels = (protection == Some("fargate") && !node_pinned(&pod))
        .then(|| profile_for(profiles, namespace).map(|p| &p.labels))
        .flatten();
    only_added(&pod, &patched, profile_labels)?;
    if labels_of(&patched) != labels_of(&pod) {
        prop_assert!(
            matches_any(profiles, namespace, &labels_of(&patched)),
            "labels added, but they match no profile: {:?}",
            labels_of(&patched)
        );
    }
    // Nothing spot on a pod bound for Fargate, before or after the patch; only
    // Fargate's scheduler may be set, in place of the default one.
    if placed_elsewhere(&pod, namespace, profiles) || fargate_bound(&patched, namespace, profiles) {
        let mut spec = patched["spec"].clone();
        if spec["schedulerName"] != pod["spec"]["schedulerName"] {
            prop_assert_eq!(&spec["schedulerName"], FARGATE_SCHEDULER, "{}", spec);
            prop_assert!(!node_pinned(&pod), "a pinned pod's scheduler moved");
            prop_assert!(
                matches!(
                    pod["spec"]["schedulerName"].as_str(),
                    None | Some("" | "default-scheduler")
                ),
                "a chosen scheduler replaced"
            );
            match pod["spec"].get("schedulerName") {
                Some(v) => spec["schedulerName"] = v.clone(),
                None => {
                    spec.as_object_mut().unwrap().remove("schedulerName");
                }
            }
        }
        prop_assert_eq!(&spec, &pod["spec"], "a placed pod's spec moved");
    }
    // Reinvocation: the webhook's own output changes nothing.
    let again = review(&envelope, &patched);
    let (status, body) = webhook.post(envelope.config, serde_json::to_vec(&again).unwrap());
    let second = answer(status, &body, uid)?;
    prop_assert!(
        second.patch.is_none(),
        "second pass patched again: {:?}",
        second.patch
    );
    Ok(())
}

/// How many inputs were patched (and so went through every check and a second pass).
static PATCHED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn fuzz_mutate() {
    let webhook = Webhook::new();
    fuzz("mutate", (envelope(), pod_edits()), |input| {
        check_mutation(&webhook, input)
    });
    println!(
        "fuzz mutate: {} inputs patched, applied, checked and admitted again",
        PATCHED.load(Ordering::Relaxed)
    );
}

// ---- malformed bodies ---------------------------------------------------------------

/// A review with one field removed or replaced by a value of another type.
fn broken_review() -> impl Strategy<Value = Vec<u8>> {
    let paths: &[&[&str]] = &[
        &["apiVersion"],
        &["kind"],
        &["request"],
        &["request", "uid"],
        &["request", "kind"],
        &["request", "operation"],
        &["request", "object"],
        &["request", "object", "metadata"],
        &["request", "object", "spec"],
        &["request", "object", "spec", "containers"],
        &["request", "object", "spec", "tolerations"],
        &["request", "object", "metadata", "annotations"],
        &["request", "object", "metadata", "ownerReferences"],
    ];
    let garbage = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,8}".prop_map(Value::from),
        Just(json!([1, "a", null])),
        Just(json!({"x": 1})),
    ];
    (select(paths), prop::option::of(garbage)).prop_map(|(path, replacement)| {
        let mut v = REVIEW.clone();
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
    })
}

fn malformed_body() -> impl Strategy<Value = Vec<u8>> {
    let fixture = serde_json::to_vec(&*REVIEW).unwrap();
    let cut = fixture.clone();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        ".{0,64}".prop_map(String::into_bytes),
        (0..fixture.len()).prop_map(move |n| cut[..n].to_vec()),
        broken_review(),
    ]
}

#[test]
fn fuzz_mutate_malformed_bodies() {
    let webhook = Webhook::new();
    fuzz("mutate-malformed", malformed_body(), |body| {
        let (status, answer) = webhook.post(0, body);
        let text = String::from_utf8_lossy(&answer);
        prop_assert!(!status.is_server_error(), "{}: {}", status, text);
        prop_assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{}: {}",
            status,
            text
        );
        if status == StatusCode::OK {
            let v: Value = serde_json::from_slice(&answer)
                .map_err(|e| TestCaseError::fail(format!("200 but not JSON ({e}): {text}")))?;
            prop_assert_eq!(&v["response"]["allowed"], true, "{}", text);
        }
        Ok(())
    });
}
