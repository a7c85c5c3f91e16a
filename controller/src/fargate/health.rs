//! The health of a rollout spotkube follows: the Deployment's rollout status, the ready
//! endpoints of every Service selecting its pods (read from EndpointSlices: a pod the
//! Deployment counts as available may not be in its Service yet), and why Fargate does
//! not start a pod, when its scheduler says so.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client, ResourceExt};
use spotkube_shared::fargate::FARGATE_SCHEDULER;

use super::step::{Endpoints, Health};
use crate::act::replacement_ready;
use crate::error::{KubeResultExt, Result};

/// The label EndpointSlices carry with their Service's name.
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Reads the health of `d` now: a LIST of Services, of EndpointSlices when one selects
/// the pods, and of the workload's pending pods when `fargate_bound` (only a rollout to
/// Fargate can be refused by it). Also returns how many requests that was.
pub async fn health(client: &Client, d: &Deployment, fargate_bound: bool) -> Result<(Health, u64)> {
    let mut requests = 1;
    let namespace = d.namespace().unwrap_or_default();
    let template_labels = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let services = Api::<Service>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .kube("list", format_args!("services/{namespace}"))?;
    let selecting: Vec<String> = services
        .items
        .iter()
        .filter(|s| selects(s, &template_labels))
        .map(ResourceExt::name_any)
        .collect();
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
    let endpoints = if selecting.is_empty() {
        Endpoints::NoService
    } else {
        requests += 1;
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default().labels(SERVICE_NAME))
            .await
            .kube("list", format_args!("endpointslices/{namespace}"))?;
        let ready = ready_endpoints(&slices.items);
        Endpoints::Ready {
            ready: selecting
                .iter()
                .map(|s| ready.get(s).map_or(0, BTreeSet::len))
                .min()
                .unwrap_or(0),
            wanted,
        }
    };
    let fargate_failure = if fargate_bound {
        requests += 1;
        fargate_refusal(client, d).await?
    } else {
        None
    };
    let health = Health {
        rollout_done: replacement_ready(d),
        endpoints,
        fargate_failure,
    };
    Ok((health, requests))
}

/// Whether Service `s` selects pods labelled `labels` (a Service without a selector
/// has hand-made endpoints: not the workload's).
fn selects(s: &Service, labels: &BTreeMap<String, String>) -> bool {
    match s.spec.as_ref().and_then(|spec| spec.selector.as_ref()) {
        Some(selector) if !selector.is_empty() => {
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
        _ => false,
    }
}

/// Ready, non-terminating endpoints per Service, by target (a pod in two slices, as in
/// dual-stack, counts once).
fn ready_endpoints(slices: &[EndpointSlice]) -> BTreeMap<String, BTreeSet<String>> {
    let mut ready: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice.labels().get(SERVICE_NAME) else {
            continue;
        };
        let entry = ready.entry(service.clone()).or_default();
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // An unknown readiness counts as ready, as kube-proxy does.
            let is_ready = conditions.and_then(|c| c.ready) != Some(false)
                && conditions.and_then(|c| c.terminating) != Some(true);
            if is_ready {
                let target = endpoint
                    .target_ref
                    .as_ref()
                    .and_then(|t| t.name.clone())
                    .unwrap_or_else(|| endpoint.addresses.join(","));
                entry.insert(target);
            }
        }
    }
    ready
}

/// The message of the fargate-scheduler's refusal for a pod of `d` (PodScheduled False
/// on a pending pod it is to place), if any.
async fn fargate_refusal(client: &Client, d: &Deployment) -> Result<Option<String>> {
    let namespace = d.namespace().unwrap_or_default();
    let Some(selector) = d
        .spec
        .as_ref()
        .and_then(|s| Selector::try_from(s.selector.clone()).ok())
    else {
        return Ok(None);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().fields("spec.nodeName="))
        .await
        .kube("list", format_args!("pods/{namespace}"))?;
    Ok(pods
        .items
        .iter()
        .filter(|p| selector.matches(p.labels()))
        .find_map(refusal))
}

fn refusal(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if spec.scheduler_name.as_deref() != Some(FARGATE_SCHEDULER) || spec.node_name.is_some() {
        return None;
    }
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_else(|| "unschedulable".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_endpoints_count_each_ready_pod_once_per_service() {
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            { "metadata": { "name": "web-a", "labels": { SERVICE_NAME: "web" } },
              "addressType": "IPv4",
              "endpoints": [
                { "addresses": ["10.0.0.1"], "conditions": { "ready": true },
                  "targetRef": { "kind": "Pod", "name": "web-1" } },
                { "addresses": ["10.0.0.2"], "conditions": { "ready": false },
                  "targetRef": { "kind": "Pod", "name": "web-2" } },
                { "addresses": ["10.0.0.3"], "conditions": { "ready": true, "terminating": true },
                  "targetRef": { "kind": "Pod", "name": "web-3" } } ] },
            { "metadata": { "name": "web-b", "labels": { SERVICE_NAME: "web" } },
              "addressType": "IPv6",
              "endpoints": [
                { "addresses": ["fd00::1"], "conditions": { "ready": true },
                  "targetRef": { "kind": "Pod", "name": "web-1" } } ] },
        ]))
        .unwrap();
        let ready = ready_endpoints(&slices);
        assert_eq!(ready["web"], BTreeSet::from(["web-1".to_string()]));
    }

    #[test]
    fn a_service_selects_the_pods_its_selector_matches() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let service = |selector: serde_json::Value| -> Service {
            serde_json::from_value(
                json!({ "metadata": { "name": "s" }, "spec": { "selector": selector } }),
            )
            .unwrap()
        };
        assert!(selects(&service(json!({ "app": "web" })), &labels));
        assert!(!selects(&service(json!({ "app": "api" })), &labels));
        assert!(!selects(&service(json!({})), &labels));
    }

    #[test]
    fn only_a_pending_fargate_pod_with_podscheduled_false_is_a_refusal() {
        let pod = |scheduler: &str, node: Option<&str>, status: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": { "name": "p" },
                "spec": { "schedulerName": scheduler, "nodeName": node, "containers": [] },
                "status": { "conditions": [{ "type": "PodScheduled", "status": status,
                    "reason": "Unschedulable", "message": "Fargate capacity unavailable" }] },
            }))
            .unwrap()
        };
        assert_eq!(
            refusal(&pod(FARGATE_SCHEDULER, None, "False")).as_deref(),
            Some("Fargate capacity unavailable")
        );
        assert_eq!(refusal(&pod(FARGATE_SCHEDULER, None, "True")), None);
        assert_eq!(refusal(&pod(FARGATE_SCHEDULER, Some("n"), "False")), None);
        assert_eq!(refusal(&pod("default-scheduler", None, "False")), None);
    }
}
