//! Reads the cluster into the views [`crate::decide`] works on: the Node, the pods on
//! it, their owners (pod → ReplicaSet → Deployment, StatefulSet, DaemonSet) and their
//! resolved spot policies. Owner facts that rarely change are cached briefly
//! ([`OwnerCache`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use spotkube_shared::annotations::{self, InterruptionNotice};
use spotkube_shared::policy::{self, Layers, Policy};

use crate::decide::{DeploymentView, NodeView, Owner, PodView, RolloutStrategy, TaintEffect};
use crate::error::{KubeResultExt, Result};
use crate::ttl_cache::TtlCache;

/// Static pods' mirrors carry this annotation.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

pub fn node_view(node: &Node) -> NodeView {
    let spec = node.spec.as_ref();
    let taint = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .find(|t| t.key == annotations::INTERRUPTION_TAINT)
        .and_then(|t| match t.effect.as_str() {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            _ => None,
        });
    let notice = node
        .annotations()
        .get(annotations::INTERRUPTION)
        .and_then(|v| InterruptionNotice::from_annotation(v).ok());
    NodeView {
        name: node.name_any(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        taint,
        notice,
    }
}

pub fn deployment_view(d: &Deployment, hpa_managed: bool) -> DeploymentView {
    let spec = d.spec.as_ref();
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    let strategy = match strategy.and_then(|s| s.type_.as_deref()) {
        Some("Recreate") => RolloutStrategy::Recreate,
        _ => {
            let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
            RolloutStrategy::RollingUpdate {
                max_surge: rolling.and_then(|r| r.max_surge.clone()),
                max_unavailable: rolling.and_then(|r| r.max_unavailable.clone()),
            }
        }
    };
    let a = d.annotations();
    DeploymentView {
        name: d.name_any(),
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        strategy,
        hpa_managed,
        surged_for: a.get(annotations::REASON).cloned(),
        surge_from: a.get(annotations::SURGE_FROM).and_then(|v| v.parse().ok()),
    }
}

/// How long owner facts stay cached (see [`OwnerCache`]).
pub const OWNER_CACHE_TTL: Duration = Duration::from_secs(30);

/// Owner facts that change rarely, cached across calls for [`OWNER_CACHE_TTL`]: a
/// Namespace's annotations, a ReplicaSet's owning Deployment, a namespace's HPA
/// targets. Why: a burst of interruptions (a whole AZ reclaimed) reads the same
/// namespaces and owners for every node, and the drain reconcile reads them again
/// every pass; cached, the API reads grow with distinct owners, not with pods × passes.
/// Why a short TTL rather than a watch: these are read only when a node is being
/// interrupted, so keeping every ReplicaSet and HPA of the cluster in memory would
/// cost more than it saves. A policy or HPA change takes effect within the TTL.
/// Deployments and StatefulSets themselves are never cached: their replicas and surge
/// record decide the surge (and the surge re-reads the Deployment before it writes).
#[derive(Clone)]
pub struct OwnerCache {
    namespaces: TtlCache<String, BTreeMap<String, String>>,
    /// (namespace, ReplicaSet) → the Deployment controlling it, if any.
    replica_set_owners: TtlCache<(String, String), Option<String>>,
    hpa_targets: TtlCache<String, Vec<String>>,
}

impl OwnerCache {
    pub fn new(ttl: Duration) -> OwnerCache {
        OwnerCache {
            namespaces: TtlCache::new(ttl),
            replica_set_owners: TtlCache::new(ttl),
            hpa_targets: TtlCache::new(ttl),
        }
    }
}

impl Default for OwnerCache {
    fn default() -> OwnerCache {
        OwnerCache::new(OWNER_CACHE_TTL)
    }
}

/// Reads the pods on `node_name` with their owners and policies. Owner lookups are
/// cached for the duration of this call only; see [`pods_on_cached`].
pub async fn pods_on(client: &Client, node_name: &str, defaults: &Policy) -> Result<Vec<PodView>> {
    pods_on_cached(client, &OwnerCache::default(), node_name, defaults).await
}

/// Reads the pods on `node_name` with their owners and policies, owner facts through
/// `cache`.
pub async fn pods_on_cached(
    client: &Client,
    cache: &OwnerCache,
    node_name: &str,
    defaults: &Policy,
) -> Result<Vec<PodView>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node_name}")))
        .await
        .kube("list", format_args!("pods on node/{node_name}"))?;
    let mut views = Vec::new();
    for pod in list.items {
        let ns = pod.namespace().unwrap_or_default();
        let namespace_annotations = namespace_annotations(client, cache, &ns).await?;
        let (owner, workload_annotations) = owner_of(client, cache, &pod).await?;
        let resolved = policy::resolve(
            defaults,
            Layers {
                namespace: Some(&namespace_annotations),
                workload: workload_annotations.as_ref(),
                pod: Some(pod.annotations()),
            },
        );
        for warning in &resolved.warnings {
            tracing::debug!(pod = %pod.name_any(), namespace = %ns, %warning, "policy annotation ignored");
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        views.push(PodView {
            namespace: ns,
            name: pod.name_any(),
            done: pod.metadata.deletion_timestamp.is_some()
                || matches!(phase, Some("Succeeded" | "Failed")),
            owner,
            policy: resolved.policy,
        });
    }
    Ok(views)
}

async fn namespace_annotations(
    client: &Client,
    cache: &OwnerCache,
    ns: &str,
) -> Result<BTreeMap<String, String>> {
    if let Some(annotations) = cache.namespaces.get(ns) {
        return Ok(annotations);
    }
    let annotations = Api::<Namespace>::all(client.clone())
        .get_opt(ns)
        .await
        .kube("get", format_args!("namespace/{ns}"))?
        .map(|n| n.annotations().clone())
        .unwrap_or_default();
    cache.namespaces.insert(ns.to_string(), annotations.clone());
    Ok(annotations)
}

/// The Deployment controlling ReplicaSet `ns/name`, if any (and if the ReplicaSet
/// exists).
async fn replica_set_owner(
    client: &Client,
    cache: &OwnerCache,
    ns: &str,
    name: &str,
) -> Result<Option<String>> {
    let key = (ns.to_string(), name.to_string());
    if let Some(owner) = cache.replica_set_owners.get(&key) {
        return Ok(owner);
    }
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .kube("get", format_args!("replicaset/{ns}/{name}"))?;
    let owner = rs.as_ref().and_then(|rs| {
        rs.owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Deployment")
            .map(|o| o.name.clone())
    });
    cache.replica_set_owners.insert(key, owner.clone());
    Ok(owner)
}

/// The Deployments an HPA of namespace `ns` scales.
async fn hpa_targets(client: &Client, cache: &OwnerCache, ns: &str) -> Result<Vec<String>> {
    if let Some(targets) = cache.hpa_targets.get(ns) {
        return Ok(targets);
    }
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .kube("list", format_args!("horizontalpodautoscalers in {ns}"))?;
    let targets: Vec<String> = hpas
        .items
        .iter()
        .map(|h| &h.spec)
        .filter(|s| s.scale_target_ref.kind == "Deployment")
        .map(|s| s.scale_target_ref.name.clone())
        .collect();
    cache.hpa_targets.insert(ns.to_string(), targets.clone());
    Ok(targets)
}

async fn owner_of(
    client: &Client,
    cache: &OwnerCache,
    pod: &Pod,
) -> Result<(Owner, Option<BTreeMap<String, String>>)> {
    if pod.annotations().contains_key(MIRROR_ANNOTATION) {
        return Ok((Owner::Mirror, None));
    }
    let ns = pod.namespace().unwrap_or_default();
    let Some(controller) = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return Ok((Owner::None, None));
    };
    match controller.kind.as_str() {
        "DaemonSet" => Ok((Owner::DaemonSet, None)),
        "StatefulSet" => {
            let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
                .get_opt(&controller.name)
                .await
                .kube("get", format_args!("statefulset/{ns}/{}", controller.name))?;
            Ok(match sts {
                Some(sts) => (
                    Owner::StatefulSet {
                        name: sts.name_any(),
                        replicas: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    },
                    Some(sts.annotations().clone()),
                ),
                None => (Owner::None, None),
            })
        }
        "ReplicaSet" => {
            let Some(deployment_name) =
                replica_set_owner(client, cache, &ns, &controller.name).await?
            else {
                return Ok((other(controller), None));
            };
            let Some(deployment) = Api::<Deployment>::namespaced(client.clone(), &ns)
                .get_opt(&deployment_name)
                .await
                .kube("get", format_args!("deployment/{ns}/{deployment_name}"))?
            else {
                return Ok((other(controller), None));
            };
            let hpa_managed = hpa_targets(client, cache, &ns)
                .await?
                .contains(&deployment_name);
            Ok((
                Owner::Deployment(deployment_view(&deployment, hpa_managed)),
                Some(deployment.annotations().clone()),
            ))
        }
        _ => Ok((other(controller), None)),
    }
}

fn other(controller: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference) -> Owner {
    Owner::OtherController {
        kind: controller.kind.clone(),
        name: controller.name.clone(),
    }
}
