//! Reads the cluster into the views [`crate::decide`] works on: the Node, the pods on
//! it, their owners (pod → ReplicaSet → Deployment, StatefulSet, DaemonSet) and their
//! resolved spot policies.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use spotkube_shared::annotations::{self, InterruptionNotice};
use spotkube_shared::policy::{self, Layers, Policy};

use crate::decide::{DeploymentView, NodeView, Owner, PodView, RolloutStrategy, TaintEffect};
use crate::error::{KubeResultExt, Result};

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

/// Reads the pods on `node_name` with their owners and policies. Lookups are cached
/// for the duration of one call (several pods often share a namespace or owner).
pub async fn pods_on(client: &Client, node_name: &str, defaults: &Policy) -> Result<Vec<PodView>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node_name}")))
        .await
        .kube("list", format_args!("pods on node/{node_name}"))?;
    let mut namespaces: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let mut hpa_targets: HashMap<String, Vec<String>> = HashMap::new();
    let mut views = Vec::new();
    for pod in list.items {
        let ns = pod.namespace().unwrap_or_default();
        if !namespaces.contains_key(&ns) {
            let annotations = Api::<Namespace>::all(client.clone())
                .get_opt(&ns)
                .await
                .kube("get", format_args!("namespace/{ns}"))?
                .map(|n| n.annotations().clone())
                .unwrap_or_default();
            namespaces.insert(ns.clone(), annotations);
        }
        let (owner, workload_annotations) = owner_of(client, &pod, &mut hpa_targets).await?;
        let resolved = policy::resolve(
            defaults,
            Layers {
                namespace: namespaces.get(&ns),
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

async fn owner_of(
    client: &Client,
    pod: &Pod,
    hpa_targets: &mut HashMap<String, Vec<String>>,
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
            let rs = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
                .get_opt(&controller.name)
                .await
                .kube("get", format_args!("replicaset/{ns}/{}", controller.name))?;
            let deployment_name = rs.as_ref().and_then(|rs| {
                rs.owner_references()
                    .iter()
                    .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                    .map(|o| o.name.clone())
            });
            let Some(deployment_name) = deployment_name else {
                return Ok((other(controller), None));
            };
            let Some(deployment) = Api::<Deployment>::namespaced(client.clone(), &ns)
                .get_opt(&deployment_name)
                .await
                .kube("get", format_args!("deployment/{ns}/{deployment_name}"))?
            else {
                return Ok((other(controller), None));
            };
            if !hpa_targets.contains_key(&ns) {
                let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns)
                    .list(&ListParams::default())
                    .await
                    .kube("list", format_args!("horizontalpodautoscalers in {ns}"))?;
                let targets = hpas
                    .items
                    .iter()
                    .map(|h| &h.spec)
                    .filter(|s| s.scale_target_ref.kind == "Deployment")
                    .map(|s| s.scale_target_ref.name.clone())
                    .collect();
                hpa_targets.insert(ns.clone(), targets);
            }
            let hpa_managed = hpa_targets[&ns].contains(&deployment_name);
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
