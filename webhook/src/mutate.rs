//! The mutation itself, pure: a Pod, its resolved policy and the webhook's configuration
//! in, a JSONPatch out. No I/O, so every rule is unit-tested here.
//!
//! Rules (see DESIGN.md, "The user-facing contract"):
//! - spot node affinity: preferred terms (one per configured spot label, configured
//!   weight) for `spot-preferred`, required terms for `spot-only`, and for `on-demand` a
//!   required `NotIn` per spot label, so the pod stays off spot even when the (ignorable)
//!   extender is down, slow or skipped. The user's own terms are never removed. Because
//!   required `nodeSelectorTerms` are ORed, adding a term next to the user's would
//!   *widen* their constraint; so `spot-only` on a pod that already has required terms
//!   gets the spot terms as preferred instead, with a warning, and `on-demand`'s `NotIn`
//!   expressions are ANDed into every existing term. A pod whose own node selector or
//!   required terms ask for spot contradicts `on-demand`: it is left as it is, with a
//!   warning.
//! - tolerations for the configured spot taints, each added only when not present.
//! - one `topologySpreadConstraint` (zones or capacity types, `ScheduleAnyway`) when the
//!   pod belongs to a replicated workload and has no constraint on that key already.
//!   "Replicated" is read from the controlling ownerReference (ReplicaSet, StatefulSet,
//!   ReplicationController): the webhook never calls the API server per request, and a
//!   `ScheduleAnyway` constraint is harmless while such a workload runs one replica.
//! - pods bound for Fargate get no spot affinity, tolerations, spread or `schedulerName`:
//!   Fargate's own scheduler places them. A pod is bound for Fargate when its node
//!   selector or required affinity asks for `eks.amazonaws.com/compute-type: fargate`,
//!   when its `schedulerName` is already `fargate-scheduler` (EKS's Fargate webhook,
//!   which runs before spotkube's, matched it to a profile), or when its labels match a
//!   configured Fargate profile (`--fargate-profile`) of the request's namespace (a
//!   workload spotkube moved to Fargate carries the profile's labels in its template).
//! - `capacity: fargate`: the pod runs on Fargate from the start. It gets the labels of
//!   the first profile that covers its namespace (unless it already matches one) and
//!   `schedulerName: fargate-scheduler` (EKS's webhook ran before spotkube's and does not
//!   see the labels unless it is reinvoked), and nothing spot. When no profile covers
//!   the namespace, or the pod's own label contradicts the profile's, it is placed as
//!   `on-demand` would be, with a warning.
//! - DaemonSet pods and static pods' mirrors get none of those either: their node is
//!   already chosen (the DaemonSet controller's required affinity on `metadata.name`, or
//!   the kubelet), so a spot policy or another scheduler could only leave them Pending.
//! - `spotkube.io/protection` (the resolved capacity) and `spotkube.io/mutated-by`.
//! - `schedulerName` when configured and the pod still uses the default scheduler.
//!
//! The patch is the diff between the pod before and after, so a pod that already has
//! everything (the webhook's own output) yields an empty patch.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PreferredSchedulingTerm, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use spotkube_shared::annotations::{self, Capacity, Spread};
use spotkube_shared::fargate::{self, FARGATE_SCHEDULER, FargateProfile};
use spotkube_shared::labels;
use spotkube_shared::policy::Policy;

/// The scheduler name the API server defaults to.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Labels a spread selector must not copy from the pod: those that vary per revision
/// (the spread covers old and new replicas during a rollout) and a StatefulSet's
/// per-pod identity labels (kept, they would make the selector match this pod only).
const NON_SELECTOR_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

/// Owner kinds that run replicas of one pod template.
const REPLICATED_OWNERS: &[&str] = &["ReplicaSet", "StatefulSet", "ReplicationController"];

/// How the webhook mutates pods (from its flags).
#[derive(Debug, Clone, PartialEq)]
pub struct MutationConfig {
    /// Node labels that mark spot capacity (`key`, `value`); any one of them is enough.
    pub spot_labels: Vec<(String, String)>,
    /// Weight of the preferred spot terms (1..=100).
    pub preferred_weight: i32,
    /// Tolerations for the taints spot nodes carry.
    pub tolerations: Vec<Toleration>,
    /// spotkube's scheduler profile; `None` leaves `schedulerName` alone.
    pub scheduler_name: Option<String>,
    /// The topology key for `spread: capacity-types`.
    pub capacity_topology_key: String,
    /// The value of `spotkube.io/mutated-by`.
    pub mutated_by: String,
    /// The cluster's Fargate profiles: pods that match one are left to Fargate, and
    /// `capacity: fargate` pods get the labels of their namespace's first one.
    pub fargate_profiles: Vec<FargateProfile>,
}

impl Default for MutationConfig {
    fn default() -> Self {
        MutationConfig {
            spot_labels: vec![
                (labels::KARPENTER_CAPACITY_TYPE.into(), "spot".into()),
                (labels::EKS_CAPACITY_TYPE.into(), "SPOT".into()),
            ],
            preferred_weight: 50,
            tolerations: Vec::new(),
            scheduler_name: None,
            capacity_topology_key: labels::KARPENTER_CAPACITY_TYPE.into(),
            mutated_by: concat!("spotkube-webhook/", env!("CARGO_PKG_VERSION")).into(),
            fargate_profiles: Vec::new(),
        }
    }
}

/// What a patch changes, for the `patches by kind` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatchKind {
    Affinity,
    Tolerations,
    Spread,
    Annotations,
    SchedulerName,
    /// A Fargate profile's labels (`capacity: fargate`).
    Labels,
}

impl PatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchKind::Affinity => "affinity",
            PatchKind::Tolerations => "tolerations",
            PatchKind::Spread => "spread",
            PatchKind::Annotations => "annotations",
            PatchKind::SchedulerName => "scheduler-name",
            PatchKind::Labels => "labels",
        }
    }
}

impl fmt::Display for PatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of [`mutate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// Empty when the pod already has everything.
    pub patch: json_patch::Patch,
    /// What changed, sorted, no duplicates.
    pub kinds: Vec<PatchKind>,
    /// Explanations for the user (admission warnings).
    pub warnings: Vec<String>,
}

/// A `--spot-toleration` value that is not `KEY[=VALUE]:EFFECT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "toleration {0:?} is not KEY[=VALUE]:EFFECT with EFFECT NoSchedule, PreferNoSchedule or NoExecute"
)]
pub struct InvalidToleration(pub String);

/// Parses `KEY[=VALUE]:EFFECT` (`Equal` with a value, `Exists` without).
pub fn parse_toleration(s: &str) -> Result<Toleration, InvalidToleration> {
    let err = || InvalidToleration(s.to_string());
    let (kv, effect) = s.rsplit_once(':').ok_or_else(err)?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(err());
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(err());
    }
    Ok(Toleration {
        key: Some(key.to_string()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_string()),
        value: value.map(str::to_string),
        effect: Some(effect.to_string()),
        toleration_seconds: None,
    })
}

/// Whether the pod of `namespace` is bound for Fargate: node selector or required node
/// affinity on `eks.amazonaws.com/compute-type: fargate`, `schedulerName:
/// fargate-scheduler` (EKS's Fargate webhook matched it), or labels that match one of
/// `profiles` in `namespace`.
pub fn is_fargate_bound(pod: &Pod, namespace: &str, profiles: &[FargateProfile]) -> bool {
    let Some(spec) = &pod.spec else { return false };
    if spec.scheduler_name.as_deref() == Some(FARGATE_SCHEDULER) {
        return true;
    }
    if let Some(labels) = &pod.metadata.labels
        && fargate::matches_any(profiles, namespace, labels)
    {
        return true;
    }
    if spec.node_selector.as_ref().is_some_and(|s| {
        s.get(labels::EKS_COMPUTE_TYPE).map(String::as_str) == Some(labels::FARGATE)
    }) {
        return true;
    }
    required_terms(pod).iter().any(|term| {
        term.match_expressions.iter().flatten().any(|e| {
            e.key == labels::EKS_COMPUTE_TYPE
                && e.operator == "In"
                && e.values.iter().flatten().any(|v| v == labels::FARGATE)
        })
    })
}

/// Whether the pod's controlling owner runs replicas of it.
pub fn is_replicated(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && REPLICATED_OWNERS.contains(&o.kind.as_str()))
}

fn required_terms(pod: &Pod) -> &[NodeSelectorTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map_or(&[], |r| r.node_selector_terms.as_slice())
}

/// Computes the patch for one pod of `namespace` (the request's: a Pod's own
/// `metadata.namespace` is often empty at CREATE). Call it only for pods whose policy is
/// enabled.
pub fn mutate(pod: &Pod, namespace: &str, policy: &Policy, config: &MutationConfig) -> Mutation {
    let mut out = pod.clone();
    let mut kinds = Vec::new();
    let mut warnings = Vec::new();
    let pinned = spotkube_shared::pod::is_node_pinned(pod);
    let mut placed_elsewhere = pinned || is_fargate_bound(pod, namespace, &config.fargate_profiles);
    // The capacity spot placement follows: `fargate` is placed as `on-demand` when the pod
    // cannot be sent to Fargate.
    let mut capacity = policy.capacity;
    if capacity == Capacity::Fargate && !pinned {
        // What happens to a pod that cannot be sent to Fargate.
        let instead = if placed_elsewhere {
            "the pod is left as it is"
        } else {
            "the pod is placed as on-demand"
        };
        if route_to_fargate(
            &mut out,
            namespace,
            &config.fargate_profiles,
            instead,
            &mut kinds,
            &mut warnings,
        ) {
            placed_elsewhere = true;
        } else {
            capacity = Capacity::OnDemand;
        }
    }

    if !placed_elsewhere {
        if add_spot_affinity(&mut out, capacity, config, &mut warnings) {
            kinds.push(PatchKind::Affinity);
        }
        if !matches!(capacity, Capacity::OnDemand | Capacity::Fargate)
            && add_tolerations(&mut out, &config.tolerations)
        {
            kinds.push(PatchKind::Tolerations);
        }
        if is_replicated(pod) && add_spread(&mut out, policy.spread, config, &mut warnings) {
            kinds.push(PatchKind::Spread);
        }
        if let Some(name) = &config.scheduler_name
            && set_scheduler_name(&mut out, name)
        {
            kinds.push(PatchKind::SchedulerName);
        }
    }
    if set_annotations(&mut out, policy.capacity, &config.mutated_by) {
        kinds.push(PatchKind::Annotations);
    }

    kinds.sort();
    let patch = if kinds.is_empty() {
        json_patch::Patch(Vec::new())
    } else {
        let before = serde_json::to_value(touched(pod)).expect("a Pod serializes");
        let after = serde_json::to_value(touched(&out)).expect("a Pod serializes");
        let patch = json_patch::diff(&before, &after);
        // The projection's patch is the whole pods' patch (checked in every debug
        // build: unit, fuzz and rig tests).
        debug_assert_eq!(
            patch,
            json_patch::diff(
                &serde_json::to_value(pod).expect("a Pod serializes"),
                &serde_json::to_value(&out).expect("a Pod serializes"),
            ),
            "the patch of the touched fields differs from the whole pods' patch"
        );
        patch
    };
    Mutation {
        patch,
        kinds,
        warnings,
    }
}

/// The fields a mutation may change (labels, annotations, affinity, tolerations,
/// topology spread, `schedulerName`), all others left out. The patch is the diff of these
/// projections: the same operations as the diff of the whole pods, because every other
/// field is equal before and after (and a `spec` added whole holds nothing else), and
/// the projections serialize their fields in the same order. Serializing and diffing
/// whole pods (managed fields, containers, volumes) was a quarter of the webhook's CPU.
fn touched(pod: &Pod) -> Pod {
    Pod {
        metadata: ObjectMeta {
            annotations: pod.metadata.annotations.clone(),
            labels: pod.metadata.labels.clone(),
            ..ObjectMeta::default()
        },
        spec: pod.spec.as_ref().map(|spec| PodSpec {
            affinity: spec.affinity.clone(),
            tolerations: spec.tolerations.clone(),
            topology_spread_constraints: spec.topology_spread_constraints.clone(),
            scheduler_name: spec.scheduler_name.clone(),
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn spot_requirement(key: &str, value: &str) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.to_string(),
        operator: "In".to_string(),
        values: Some(vec![value.to_string()]),
    }
}

fn spot_term(key: &str, value: &str) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: Some(vec![spot_requirement(key, value)]),
        match_fields: None,
    }
}

fn node_affinity(pod: &mut Pod) -> &mut NodeAffinity {
    pod.spec
        .get_or_insert_with(Default::default)
        .affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
}

/// Adds the spot terms the capacity asks for; true when something was added.
fn add_spot_affinity(
    pod: &mut Pod,
    capacity: Capacity,
    config: &MutationConfig,
    warnings: &mut Vec<String>,
) -> bool {
    if config.spot_labels.is_empty() {
        return false;
    }
    let required = match capacity {
        // `fargate` reaches here only when the pod could not be sent to Fargate.
        Capacity::OnDemand | Capacity::Fargate => return exclude_spot(pod, config, warnings),
        Capacity::SpotPreferred => false,
        Capacity::SpotOnly => {
            let ours: Vec<NodeSelectorTerm> = config
                .spot_labels
                .iter()
                .map(|(k, v)| spot_term(k, v))
                .collect();
            let existing = required_terms(pod);
            if existing.is_empty() || existing == ours.as_slice() {
                true
            } else {
                warnings.push(format!(
                    "{}: spot-only added as preferred node affinity because the pod has its own required node affinity, which spotkube does not rewrite",
                    annotations::CAPACITY
                ));
                false
            }
        }
    };
    let node_affinity = node_affinity(pod);
    let mut changed = false;
    if required {
        let selector = node_affinity
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(NodeSelector::default);
        for (k, v) in &config.spot_labels {
            let term = spot_term(k, v);
            if !selector.node_selector_terms.contains(&term) {
                selector.node_selector_terms.push(term);
                changed = true;
            }
        }
    } else {
        let preferred = node_affinity
            .preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new);
        for (k, v) in &config.spot_labels {
            let term = PreferredSchedulingTerm {
                weight: config.preferred_weight,
                preference: spot_term(k, v),
            };
            // Any preference on the same label/value counts (the user may have set
            // their own weight): never add a second one.
            let present = preferred.iter().any(|p| {
                p.preference
                    .match_expressions
                    .iter()
                    .flatten()
                    .any(|e| *e == term.preference.match_expressions.as_ref().unwrap()[0])
            });
            if !present {
                preferred.push(term);
                changed = true;
            }
        }
    }
    changed
}

/// `on-demand`: ANDs a `NotIn` requirement per spot label into every required term (or
/// into a new one when the pod has none); true when something was added. Nothing is
/// added, with a warning, when the pod itself requires spot: the exclusion would make it
/// unschedulable, or quietly drop the user's spot choice.
fn exclude_spot(pod: &mut Pod, config: &MutationConfig, warnings: &mut Vec<String>) -> bool {
    if let Some(conflict) = spot_required_by_user(pod, config) {
        warnings.push(format!(
            "{}: on-demand is not enforced by node affinity because the pod's own {conflict} requires spot capacity; only spotkube's scheduler extender keeps it off spot nodes",
            annotations::CAPACITY
        ));
        return false;
    }
    let exclusions: Vec<NodeSelectorRequirement> = config
        .spot_labels
        .iter()
        .map(|(key, value)| NodeSelectorRequirement {
            key: key.clone(),
            operator: "NotIn".to_string(),
            values: Some(vec![value.clone()]),
        })
        .collect();
    let selector = node_affinity(pod)
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if selector.node_selector_terms.is_empty() {
        selector
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    let mut changed = false;
    for term in &mut selector.node_selector_terms {
        let expressions = term.match_expressions.get_or_insert_with(Vec::new);
        for exclusion in &exclusions {
            if !expressions.contains(exclusion) {
                expressions.push(exclusion.clone());
                changed = true;
            }
        }
    }
    changed
}

/// Where the pod itself asks for spot capacity, if it does: its `nodeSelector` on a spot
/// label, or a required term whose `In` on a spot label's key admits spot values only.
fn spot_required_by_user(pod: &Pod, config: &MutationConfig) -> Option<String> {
    let is_spot = |key: &str, value: &str| {
        config
            .spot_labels
            .iter()
            .any(|(k, v)| k == key && v == value)
    };
    let selector = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref());
    for (key, value) in selector.into_iter().flatten() {
        if is_spot(key, value) {
            return Some(format!("nodeSelector {key}={value}"));
        }
    }
    required_terms(pod).iter().find_map(|term| {
        term.match_expressions.iter().flatten().find_map(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let only_spot = e.operator == "In"
                && !values.is_empty()
                && values.iter().all(|v| is_spot(&e.key, v));
            only_spot.then(|| {
                format!(
                    "required node affinity {} In [{}]",
                    e.key,
                    values.join(", ")
                )
            })
        })
    })
}

fn tolerates(existing: &Toleration, wanted: &Toleration) -> bool {
    let op = |t: &Toleration| t.operator.clone().unwrap_or_else(|| "Equal".into());
    // An empty-key Exists toleration tolerates everything.
    if existing.key.as_deref().unwrap_or("").is_empty() && op(existing) == "Exists" {
        return existing.effect.is_none() || existing.effect == wanted.effect;
    }
    existing.key == wanted.key
        && (existing.effect.is_none() || existing.effect == wanted.effect)
        && (op(existing) == "Exists"
            || (op(existing) == op(wanted) && existing.value == wanted.value))
}

fn add_tolerations(pod: &mut Pod, wanted: &[Toleration]) -> bool {
    let spec = pod.spec.get_or_insert_with(Default::default);
    let mut changed = false;
    for t in wanted {
        let list = spec.tolerations.get_or_insert_with(Vec::new);
        if !list.iter().any(|e| tolerates(e, t)) {
            list.push(t.clone());
            changed = true;
        }
    }
    changed
}

fn add_spread(
    pod: &mut Pod,
    spread: Spread,
    config: &MutationConfig,
    warnings: &mut Vec<String>,
) -> bool {
    let key = match spread {
        Spread::None => return false,
        Spread::Zones => labels::ZONE.to_string(),
        Spread::CapacityTypes => config.capacity_topology_key.clone(),
    };
    let match_labels: BTreeMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !NON_SELECTOR_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let spec = pod.spec.get_or_insert_with(Default::default);
    let constraints = spec
        .topology_spread_constraints
        .get_or_insert_with(Vec::new);
    if constraints.iter().any(|c| c.topology_key == key) {
        return false;
    }
    if match_labels.is_empty() {
        warnings.push(format!(
            "{}: no topology spread added because the pod has no labels to select its replicas by",
            annotations::SPREAD
        ));
        if constraints.is_empty() {
            spec.topology_spread_constraints = None;
        }
        return false;
    }
    constraints.push(TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key,
        when_unsatisfiable: "ScheduleAnyway".to_string(),
        label_selector: Some(LabelSelector {
            match_labels: Some(match_labels),
            match_expressions: None,
        }),
        ..Default::default()
    });
    true
}

/// `capacity: fargate`: gives the pod the labels of the first profile that covers
/// `namespace` (none when it already matches a profile, or EKS's webhook already chose
/// Fargate's scheduler) and `schedulerName: fargate-scheduler`. False, with a warning,
/// when the pod cannot go to Fargate: no profile covers the namespace, or the pod's own
/// label has another value than the profile's (spotkube does not overwrite it); the
/// warning ends with `instead`, what happens to the pod.
fn route_to_fargate(
    pod: &mut Pod,
    namespace: &str,
    profiles: &[FargateProfile],
    instead: &str,
    kinds: &mut Vec<PatchKind>,
    warnings: &mut Vec<String>,
) -> bool {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let scheduler = pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref());
    let matched =
        scheduler == Some(FARGATE_SCHEDULER) || fargate::matches_any(profiles, namespace, labels);
    if !matched {
        let Some(profile) = fargate::profile_for(profiles, namespace) else {
            warnings.push(format!(
                "{}: fargate, but no Fargate profile (--fargate-profile) covers namespace {namespace:?}; {instead}",
                annotations::CAPACITY
            ));
            return false;
        };
        if let Some((key, value)) = profile
            .labels
            .iter()
            .find_map(|(k, v)| labels.get_key_value(k).filter(|(_, have)| *have != v))
        {
            warnings.push(format!(
                "{}: fargate, but the pod's label {key}={value} differs from Fargate profile {profile}, and spotkube does not overwrite it; {instead}",
                annotations::CAPACITY
            ));
            return false;
        }
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(profile.labels.clone());
        kinds.push(PatchKind::Labels);
    }
    let spec = pod.spec.get_or_insert_with(Default::default);
    match spec.scheduler_name.as_deref() {
        None | Some("") | Some(DEFAULT_SCHEDULER) => {
            spec.scheduler_name = Some(FARGATE_SCHEDULER.to_string());
            kinds.push(PatchKind::SchedulerName);
        }
        Some(FARGATE_SCHEDULER) => {}
        Some(other) => warnings.push(format!(
            "{}: fargate, but the pod keeps its own schedulerName {other:?}; only {FARGATE_SCHEDULER} places pods on Fargate",
            annotations::CAPACITY
        )),
    }
    true
}

fn set_scheduler_name(pod: &mut Pod, name: &str) -> bool {
    let spec = pod.spec.get_or_insert_with(Default::default);
    match spec.scheduler_name.as_deref() {
        None | Some("") | Some(DEFAULT_SCHEDULER) => {
            spec.scheduler_name = Some(name.to_string());
            true
        }
        // The user picked a scheduler, or it is already ours.
        Some(_) => false,
    }
}

fn set_annotations(pod: &mut Pod, capacity: Capacity, mutated_by: &str) -> bool {
    let map = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in [
        (annotations::PROTECTION, capacity.as_str()),
        (annotations::MUTATED_BY, mutated_by),
    ] {
        if map.get(k).map(String::as_str) != Some(v) {
            map.insert(k.to_string(), v.to_string());
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;
    use serde_json::json;

    fn policy(capacity: Capacity, spread: Spread) -> Policy {
        Policy {
            enabled: true,
            capacity,
            spread,
            ..Policy::default()
        }
    }

    fn config() -> MutationConfig {
        MutationConfig {
            tolerations: vec![parse_toleration("spot=true:NoSchedule").unwrap()],
            scheduler_name: Some("spotkube-scheduler".into()),
            mutated_by: "spotkube-webhook/test".into(),
            fargate_profiles: vec![
                "shop,pay-*:spotkube.io/fargate=true,team=a"
                    .parse()
                    .unwrap(),
                "shop,batch:spotkube.io/fargate=batch".parse().unwrap(),
            ],
            ..MutationConfig::default()
        }
    }

    fn replicated_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([
                    ("app".to_string(), "web".to_string()),
                    ("pod-template-hash".to_string(), "abc".to_string()),
                ])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: "web-abc".into(),
                    uid: "u".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                scheduler_name: Some(DEFAULT_SCHEDULER.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn apply(pod: &Pod, m: &Mutation) -> Pod {
        let mut v = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut v, &m.patch).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn spot_preferred_replicated_pod_gets_everything_once() {
        let pod = replicated_pod();
        let p = policy(Capacity::SpotPreferred, Spread::Zones);
        let m = mutate(&pod, "demo", &p, &config());
        assert_eq!(
            m.kinds,
            vec![
                PatchKind::Affinity,
                PatchKind::Tolerations,
                PatchKind::Spread,
                PatchKind::Annotations,
                PatchKind::SchedulerName
            ]
        );
        let out = apply(&pod, &m);
        let spec = out.spec.as_ref().unwrap();
        let na = spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap();
        assert!(
            na.required_during_scheduling_ignored_during_execution
                .is_none()
        );
        let pref = na
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap();
        assert_eq!(
            serde_json::to_value(pref).unwrap(),
            json!([
                {"weight": 50, "preference": {"matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]}},
                {"weight": 50, "preference": {"matchExpressions": [{"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["SPOT"]}]}}
            ])
        );
        assert_eq!(
            serde_json::to_value(spec.tolerations.as_ref().unwrap()).unwrap(),
            json!([{"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}])
        );
        assert_eq!(
            serde_json::to_value(spec.topology_spread_constraints.as_ref().unwrap()).unwrap(),
            json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}])
        );
        assert_eq!(spec.scheduler_name.as_deref(), Some("spotkube-scheduler"));
        let ann = out.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[annotations::PROTECTION], "spot-preferred");
        assert_eq!(ann[annotations::MUTATED_BY], "spotkube-webhook/test");

        let again = mutate(&out, "demo", &p, &config());
        assert!(again.patch.0.is_empty(), "{:?}", again.patch);
        assert!(again.kinds.is_empty());
    }

    #[test]
    fn spot_only_is_required_unless_the_user_has_required_terms() {
        let pod = replicated_pod();
        let p = policy(Capacity::SpotOnly, Spread::None);
        let out = apply(&pod, &mutate(&pod, "demo", &p, &config()));
        let na = out
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .clone()
            .unwrap()
            .node_affinity
            .unwrap();
        assert_eq!(
            na.required_during_scheduling_ignored_during_execution
                .unwrap()
                .node_selector_terms
                .len(),
            2
        );
        assert!(
            out.spec
                .as_ref()
                .unwrap()
                .topology_spread_constraints
                .is_none()
        );
        assert!(mutate(&out, "demo", &p, &config()).patch.0.is_empty());

        let mut user = replicated_pod();
        let user_term = NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: "kubernetes.io/arch".into(),
                operator: "In".into(),
                values: Some(vec!["arm64".into()]),
            }]),
            match_fields: None,
        };
        user.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![user_term.clone()],
                }),
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 7,
                        preference: spot_term(labels::KARPENTER_CAPACITY_TYPE, "spot"),
                    },
                ]),
            }),
            ..Default::default()
        });
        let m = mutate(&user, "demo", &p, &config());
        assert_eq!(m.warnings.len(), 1);
        let na = apply(&user, &m)
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .node_affinity
            .unwrap();
        assert_eq!(
            na.required_during_scheduling_ignored_during_execution
                .unwrap()
                .node_selector_terms,
            vec![user_term],
            "user's required terms untouched"
        );
        let pref = na
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(
            pref.len(),
            2,
            "the user's own spot preference is kept, not duplicated"
        );
        assert_eq!(pref[0].weight, 7);
        assert_eq!(
            pref[1].preference,
            spot_term(labels::EKS_CAPACITY_TYPE, "SPOT")
        );
    }

    fn required(pod: &Pod) -> Option<Vec<NodeSelectorTerm>> {
        let na = pod
            .spec
            .as_ref()?
            .affinity
            .as_ref()?
            .node_affinity
            .as_ref()?;
        Some(
            na.required_during_scheduling_ignored_during_execution
                .as_ref()?
                .node_selector_terms
                .clone(),
        )
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn with_required_terms(mut pod: Pod, terms: Vec<NodeSelectorTerm>) -> Pod {
        pod.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                preferred_during_scheduling_ignored_during_execution: None,
            }),
            ..Default::default()
        });
        pod
    }

    fn on_demand_exclusions() -> Vec<NodeSelectorRequirement> {
        vec![
            requirement(labels::KARPENTER_CAPACITY_TYPE, "NotIn", &["spot"]),
            requirement(labels::EKS_CAPACITY_TYPE, "NotIn", &["SPOT"]),
        ]
    }

    #[test]
    fn on_demand_requires_not_spot_and_gets_no_tolerations() {
        let pod = replicated_pod();
        let p = policy(Capacity::OnDemand, Spread::CapacityTypes);
        let m = mutate(&pod, "demo", &p, &config());
        assert_eq!(
            m.kinds,
            vec![
                PatchKind::Affinity,
                PatchKind::Spread,
                PatchKind::Annotations,
                PatchKind::SchedulerName
            ]
        );
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        let out = apply(&pod, &m);
        assert_eq!(
            required(&out).unwrap(),
            vec![NodeSelectorTerm {
                match_expressions: Some(on_demand_exclusions()),
                match_fields: None,
            }],
            "one term: not spot by any configured label"
        );
        let spec = out.spec.as_ref().unwrap();
        assert!(spec.tolerations.is_none());
        assert!(
            spec.affinity
                .as_ref()
                .unwrap()
                .node_affinity
                .as_ref()
                .unwrap()
                .preferred_during_scheduling_ignored_during_execution
                .is_none()
        );
        assert_eq!(
            spec.topology_spread_constraints.as_ref().unwrap()[0].topology_key,
            labels::KARPENTER_CAPACITY_TYPE
        );
        assert!(
            mutate(&out, "demo", &p, &config()).patch.0.is_empty(),
            "idempotent"
        );
    }

    #[test]
    fn on_demand_is_anded_into_every_user_term_never_added_beside_them() {
        let arch = requirement("kubernetes.io/arch", "In", &["arm64"]);
        let zone = requirement(labels::ZONE, "In", &["us-east-1a"]);
        // A term that admits spot among others is narrowed, not a contradiction.
        let any_capacity = requirement(
            labels::KARPENTER_CAPACITY_TYPE,
            "In",
            &["spot", "on-demand"],
        );
        let terms = vec![
            NodeSelectorTerm {
                match_expressions: Some(vec![arch.clone()]),
                match_fields: None,
            },
            NodeSelectorTerm {
                match_expressions: Some(vec![zone.clone(), any_capacity.clone()]),
                match_fields: None,
            },
            NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![requirement("metadata.name", "In", &["n1"])]),
            },
        ];
        let pod = with_required_terms(replicated_pod(), terms.clone());
        let p = policy(Capacity::OnDemand, Spread::None);
        let m = mutate(&pod, "demo", &p, &config());
        assert!(m.kinds.contains(&PatchKind::Affinity));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        let out = apply(&pod, &m);
        let got = required(&out).unwrap();
        assert_eq!(
            got.len(),
            terms.len(),
            "no term added: that would widen the user's"
        );
        for (before, after) in terms.iter().zip(&got) {
            let mut expected = before.match_expressions.clone().unwrap_or_default();
            expected.extend(on_demand_exclusions());
            assert_eq!(after.match_expressions.as_ref(), Some(&expected));
            assert_eq!(after.match_fields, before.match_fields);
        }
        assert!(
            mutate(&out, "demo", &p, &config()).patch.0.is_empty(),
            "idempotent"
        );
    }

    #[test]
    fn on_demand_leaves_a_pod_that_requires_spot_as_it_is_with_a_warning() {
        let p = policy(Capacity::OnDemand, Spread::None);
        let spot_term_pod = with_required_terms(
            replicated_pod(),
            vec![
                NodeSelectorTerm {
                    match_expressions: Some(vec![requirement(
                        "kubernetes.io/arch",
                        "In",
                        &["arm64"],
                    )]),
                    match_fields: None,
                },
                spot_term(labels::EKS_CAPACITY_TYPE, "SPOT"),
            ],
        );
        let mut selector_pod = replicated_pod();
        selector_pod.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([(
            labels::KARPENTER_CAPACITY_TYPE.to_string(),
            "spot".to_string(),
        )]));
        for (pod, names) in [
            (spot_term_pod, "eks.amazonaws.com/capacityType In [SPOT]"),
            (selector_pod, "nodeSelector karpenter.sh/capacity-type=spot"),
        ] {
            let m = mutate(&pod, "demo", &p, &config());
            assert!(
                !m.kinds.contains(&PatchKind::Affinity),
                "{names}: {:?}",
                m.kinds
            );
            assert_eq!(m.warnings.len(), 1, "{names}");
            assert!(
                m.warnings[0].starts_with("spotkube.io/capacity: on-demand"),
                "{}",
                m.warnings[0]
            );
            assert!(m.warnings[0].contains(names), "{}", m.warnings[0]);
            let out = apply(&pod, &m);
            assert_eq!(
                out.spec.as_ref().unwrap().affinity,
                pod.spec.as_ref().unwrap().affinity
            );
        }
    }

    #[test]
    fn fargate_bound_pods_get_no_spot_affinity_or_scheduler() {
        let mut pod = replicated_pod();
        pod.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([(
            labels::EKS_COMPUTE_TYPE.to_string(),
            labels::FARGATE.to_string(),
        )]));
        assert!(is_fargate_bound(&pod, "demo", &[]));
        let m = mutate(
            &pod,
            "demo",
            &policy(Capacity::SpotOnly, Spread::Zones),
            &config(),
        );
        assert_eq!(m.kinds, vec![PatchKind::Annotations]);
        let out = apply(&pod, &m);
        assert_eq!(
            out.spec.unwrap().scheduler_name.as_deref(),
            Some(DEFAULT_SCHEDULER)
        );
    }

    /// The patch as JSON, to compare whole with the expected operations.
    fn ops(m: &Mutation) -> serde_json::Value {
        serde_json::to_value(&m.patch).unwrap()
    }

    fn ours(protection: &str) -> serde_json::Value {
        json!({"spotkube.io/mutated-by": "spotkube-webhook/test", "spotkube.io/protection": protection})
    }

    fn with_labels(mut pod: Pod, extra: &[(&str, &str)]) -> Pod {
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in extra {
            labels.insert(k.to_string(), v.to_string());
        }
        pod
    }

    /// What `on-demand` adds to `replicated_pod()` (app=web), with `protection`.
    fn on_demand_ops(protection: &str, selector: serde_json::Value) -> serde_json::Value {
        json!([
            {"op": "add", "path": "/metadata/annotations", "value": ours(protection)},
            {"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "karpenter.sh/capacity-type", "operator": "NotIn", "values": ["spot"]},
                    {"key": "eks.amazonaws.com/capacityType", "operator": "NotIn", "values": ["SPOT"]}
                ]}
            ]}}}},
            {"op": "replace", "path": "/spec/schedulerName", "value": "spotkube-scheduler"},
            {"op": "add", "path": "/spec/topologySpreadConstraints", "value": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": selector}}
            ]}
        ])
    }

    #[test]
    fn a_pod_on_fargates_scheduler_gets_no_spot_placement() {
        let mut pod = replicated_pod();
        pod.spec.as_mut().unwrap().scheduler_name = Some(FARGATE_SCHEDULER.into());
        assert!(is_fargate_bound(&pod, "demo", &[]));
        for capacity in [
            Capacity::SpotPreferred,
            Capacity::SpotOnly,
            Capacity::OnDemand,
        ] {
            let m = mutate(&pod, "demo", &policy(capacity, Spread::Zones), &config());
            assert_eq!(m.kinds, vec![PatchKind::Annotations], "{capacity}");
            assert!(m.warnings.is_empty(), "{:?}", m.warnings);
            assert_eq!(
                ops(&m),
                json!([{"op": "add", "path": "/metadata/annotations", "value": ours(capacity.as_str())}]),
                "{capacity}"
            );
        }
    }

    #[test]
    fn a_pod_matching_a_profile_of_its_namespace_gets_no_spot_placement() {
        let config = config();
        let pod = with_labels(
            replicated_pod(),
            &[("spotkube.io/fargate", "true"), ("team", "a")],
        );
        for namespace in ["shop", "pay-eu"] {
            assert!(is_fargate_bound(&pod, namespace, &config.fargate_profiles));
            let m = mutate(
                &pod,
                namespace,
                &policy(Capacity::SpotOnly, Spread::Zones),
                &config,
            );
            assert_eq!(m.kinds, vec![PatchKind::Annotations], "{namespace}");
            assert_eq!(
                ops(&m),
                json!([{"op": "add", "path": "/metadata/annotations", "value": ours("spot-only")}]),
                "{namespace}"
            );
        }
        // The same labels in a namespace no profile covers, and only part of a
        // profile's labels in one it covers: placed on spot as usual.
        let partial = with_labels(replicated_pod(), &[("spotkube.io/fargate", "true")]);
        for (pod, namespace) in [(&pod, "demo"), (&partial, "shop")] {
            assert!(!is_fargate_bound(pod, namespace, &config.fargate_profiles));
            let m = mutate(
                pod,
                namespace,
                &policy(Capacity::SpotPreferred, Spread::None),
                &config,
            );
            assert_eq!(
                m.kinds,
                vec![
                    PatchKind::Affinity,
                    PatchKind::Tolerations,
                    PatchKind::Annotations,
                    PatchKind::SchedulerName
                ],
                "{namespace}"
            );
        }
    }

    #[test]
    fn capacity_fargate_gets_the_namespace_profile_labels_and_fargates_scheduler() {
        let pod = replicated_pod();
        let p = policy(Capacity::Fargate, Spread::Zones);
        for namespace in ["shop", "pay-eu"] {
            let m = mutate(&pod, namespace, &p, &config());
            assert_eq!(
                m.kinds,
                vec![
                    PatchKind::Annotations,
                    PatchKind::SchedulerName,
                    PatchKind::Labels
                ],
                "{namespace}"
            );
            assert!(m.warnings.is_empty(), "{:?}", m.warnings);
            // The first profile covering the namespace; nothing spot.
            assert_eq!(
                ops(&m),
                json!([
                    {"op": "add", "path": "/metadata/annotations", "value": ours("fargate")},
                    {"op": "add", "path": "/metadata/labels/spotkube.io~1fargate", "value": "true"},
                    {"op": "add", "path": "/metadata/labels/team", "value": "a"},
                    {"op": "replace", "path": "/spec/schedulerName", "value": "fargate-scheduler"}
                ]),
                "{namespace}"
            );
            let out = apply(&pod, &m);
            assert!(is_fargate_bound(
                &out,
                namespace,
                &config().fargate_profiles
            ));
            let again = mutate(&out, namespace, &p, &config());
            assert!(again.patch.0.is_empty(), "idempotent: {:?}", again.patch);
            assert!(again.warnings.is_empty());
        }
        // "batch" is covered by the second profile only.
        let m = mutate(&pod, "batch", &p, &config());
        assert_eq!(
            ops(&m),
            json!([
                {"op": "add", "path": "/metadata/annotations", "value": ours("fargate")},
                {"op": "add", "path": "/metadata/labels/spotkube.io~1fargate", "value": "batch"},
                {"op": "replace", "path": "/spec/schedulerName", "value": "fargate-scheduler"}
            ])
        );
    }

    #[test]
    fn capacity_fargate_adds_no_labels_to_a_pod_already_routed() {
        let p = policy(Capacity::Fargate, Spread::Zones);
        // It matches the second profile of "shop" (the template carries it): no labels of
        // the first; Fargate's scheduler set in case EKS's webhook did not run.
        let matching = with_labels(replicated_pod(), &[("spotkube.io/fargate", "batch")]);
        let m = mutate(&matching, "shop", &p, &config());
        assert_eq!(
            ops(&m),
            json!([
                {"op": "add", "path": "/metadata/annotations", "value": ours("fargate")},
                {"op": "replace", "path": "/spec/schedulerName", "value": "fargate-scheduler"}
            ])
        );
        // EKS's webhook already chose Fargate (a profile spotkube was not told of): as it is.
        let mut routed = replicated_pod();
        routed.spec.as_mut().unwrap().scheduler_name = Some(FARGATE_SCHEDULER.into());
        for namespace in ["shop", "demo"] {
            let m = mutate(&routed, namespace, &p, &config());
            assert!(m.warnings.is_empty(), "{:?}", m.warnings);
            assert_eq!(
                ops(&m),
                json!([{"op": "add", "path": "/metadata/annotations", "value": ours("fargate")}]),
                "{namespace}"
            );
        }
    }

    #[test]
    fn capacity_fargate_keeps_a_scheduler_the_user_chose_with_a_warning() {
        let mut pod = replicated_pod();
        pod.spec.as_mut().unwrap().scheduler_name = Some("my-scheduler".into());
        let m = mutate(
            &pod,
            "shop",
            &policy(Capacity::Fargate, Spread::Zones),
            &config(),
        );
        assert_eq!(
            m.warnings,
            [
                "spotkube.io/capacity: fargate, but the pod keeps its own schedulerName \"my-scheduler\"; only fargate-scheduler places pods on Fargate"
            ]
        );
        assert_eq!(
            ops(&m),
            json!([
                {"op": "add", "path": "/metadata/annotations", "value": ours("fargate")},
                {"op": "add", "path": "/metadata/labels/spotkube.io~1fargate", "value": "true"},
                {"op": "add", "path": "/metadata/labels/team", "value": "a"}
            ])
        );
    }

    #[test]
    fn capacity_fargate_without_a_profile_warns_and_is_placed_as_on_demand() {
        let pod = replicated_pod();
        let p = policy(Capacity::Fargate, Spread::Zones);
        let m = mutate(&pod, "demo", &p, &config());
        assert_eq!(
            m.warnings,
            [
                "spotkube.io/capacity: fargate, but no Fargate profile (--fargate-profile) covers namespace \"demo\"; the pod is placed as on-demand"
            ]
        );
        assert_eq!(
            m.kinds,
            vec![
                PatchKind::Affinity,
                PatchKind::Spread,
                PatchKind::Annotations,
                PatchKind::SchedulerName
            ]
        );
        assert_eq!(ops(&m), on_demand_ops("fargate", json!({"app": "web"})));
        // Exactly what on-demand gets, but for the protection annotation.
        let on_demand = mutate(
            &pod,
            "demo",
            &policy(Capacity::OnDemand, Spread::Zones),
            &config(),
        );
        assert_eq!(
            ops(&on_demand),
            on_demand_ops("on-demand", json!({"app": "web"}))
        );
        let again = mutate(&apply(&pod, &m), "demo", &p, &config());
        assert!(again.patch.0.is_empty(), "idempotent: {:?}", again.patch);
        assert_eq!(again.warnings, m.warnings, "the warning stays");
    }

    #[test]
    fn capacity_fargate_without_a_profile_leaves_a_pod_with_a_fargate_selector_as_it_is() {
        let mut pod = replicated_pod();
        pod.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([(
            labels::EKS_COMPUTE_TYPE.to_string(),
            labels::FARGATE.to_string(),
        )]));
        let m = mutate(
            &pod,
            "demo",
            &policy(Capacity::Fargate, Spread::Zones),
            &config(),
        );
        assert_eq!(
            m.warnings,
            [
                "spotkube.io/capacity: fargate, but no Fargate profile (--fargate-profile) covers namespace \"demo\"; the pod is left as it is"
            ]
        );
        assert_eq!(
            ops(&m),
            json!([{"op": "add", "path": "/metadata/annotations", "value": ours("fargate")}])
        );
    }

    #[test]
    fn capacity_fargate_never_overwrites_a_label_of_the_pod() {
        let pod = with_labels(replicated_pod(), &[("team", "b")]);
        let m = mutate(
            &pod,
            "shop",
            &policy(Capacity::Fargate, Spread::Zones),
            &config(),
        );
        assert_eq!(
            m.warnings,
            [
                "spotkube.io/capacity: fargate, but the pod's label team=b differs from Fargate profile shop,pay-*:spotkube.io/fargate=true,team=a, and spotkube does not overwrite it; the pod is placed as on-demand"
            ]
        );
        assert_eq!(
            ops(&m),
            on_demand_ops("fargate", json!({"app": "web", "team": "b"}))
        );
    }

    #[test]
    fn user_choices_are_kept() {
        let mut pod = replicated_pod();
        pod.metadata.owner_references = None; // a bare pod: no spread
        let spec = pod.spec.as_mut().unwrap();
        spec.scheduler_name = Some("my-scheduler".into());
        spec.tolerations = Some(vec![Toleration {
            key: Some("spot".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        let m = mutate(
            &pod,
            "demo",
            &policy(Capacity::SpotPreferred, Spread::Zones),
            &config(),
        );
        assert_eq!(m.kinds, vec![PatchKind::Affinity, PatchKind::Annotations]);
        let out = apply(&pod, &m);
        let spec = out.spec.unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some("my-scheduler"));
        assert_eq!(spec.tolerations.unwrap().len(), 1);
        assert!(spec.topology_spread_constraints.is_none());
    }

    fn owned_by(kind: &str, name: &str) -> Option<Vec<OwnerReference>> {
        Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            ..Default::default()
        }])
    }

    #[test]
    fn daemonset_and_mirror_pods_get_annotations_only() {
        let mut daemon = replicated_pod();
        daemon.metadata.owner_references = owned_by("DaemonSet", "agent");
        let mut mirror = replicated_pod();
        mirror.metadata.owner_references = None;
        mirror.metadata.annotations = Some(BTreeMap::from([(
            spotkube_shared::pod::MIRROR_ANNOTATION.to_string(),
            "hash".to_string(),
        )]));
        for pod in [daemon, mirror] {
            for capacity in Capacity::ALL {
                // "shop" has a Fargate profile: `capacity: fargate` is refused nothing,
                // and still adds no label nor scheduler to a pinned pod.
                let m = mutate(&pod, "shop", &policy(*capacity, Spread::Zones), &config());
                assert_eq!(m.kinds, vec![PatchKind::Annotations], "{capacity:?}");
                let out = apply(&pod, &m);
                assert_eq!(out.spec, pod.spec, "{capacity:?}: spec untouched");
            }
        }
    }

    #[test]
    fn statefulset_spread_selects_every_replica() {
        let mut pod = replicated_pod();
        pod.metadata.owner_references = owned_by("StatefulSet", "db");
        pod.metadata.labels = Some(BTreeMap::from(
            [
                ("app", "db"),
                ("tier", "data"),
                ("statefulset.kubernetes.io/pod-name", "db-2"),
                ("apps.kubernetes.io/pod-index", "2"),
                ("controller-revision-hash", "db-7c9f8d"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        ));
        let m = mutate(
            &pod,
            "demo",
            &policy(Capacity::SpotPreferred, Spread::Zones),
            &config(),
        );
        assert!(m.kinds.contains(&PatchKind::Spread));
        let out = apply(&pod, &m);
        assert_eq!(
            serde_json::to_value(out.spec.unwrap().topology_spread_constraints.unwrap()).unwrap(),
            json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app": "db", "tier": "data"}}}])
        );
    }

    #[test]
    fn tolerations_parse() {
        let t = parse_toleration("spot:NoExecute").unwrap();
        assert_eq!(t.operator.as_deref(), Some("Exists"));
        assert_eq!(t.value, None);
        for bad in ["spot", "spot=true:Never", ":NoSchedule"] {
            assert!(parse_toleration(bad).is_err(), "{bad}");
        }
    }
}
