//! Whether spot can take a workload back from Fargate: a schedulable spot Node whose
//! offering is not in the ICE cache and that fits the pod's requests, or a pool whose
//! spot group can grow.
//!
//! A recovery pass surveys the Nodes once (one LIST) and reads the pods of a candidate
//! Node only when a workload asks whether it fits (one LIST per Node, cached for the
//! pass); room a workload takes is taken from the survey, so two workloads of one pass
//! never count the same room. The node check reads `nodeSelector` and tolerations of
//! the pod template; required node affinity is left to the scheduler (and to the
//! rollback if it finds nothing).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Taint, Toleration};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use spotkube_shared::annotations::INTERRUPTION_TAINT;
use spotkube_shared::labels;
use spotkube_shared::node::{CapacityType, capacity_type};

use crate::capacity::ice::{IceCache, Offering};
use crate::error::{KubeResultExt, Result};
use crate::savings::inputs::parse_quantity;

/// CPU cores and memory bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpu: f64,
    pub memory: f64,
}

impl Resources {
    fn of(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Resources {
        let get = |k: &str| {
            list.and_then(|l| l.get(k))
                .and_then(|q| parse_quantity(&q.0))
                .unwrap_or(0.0)
        };
        Resources {
            cpu: get("cpu"),
            memory: get("memory"),
        }
    }

    /// What a pod of `spec` requests (its containers' requests summed).
    pub fn requested(spec: &PodSpec) -> Resources {
        spec.containers.iter().fold(Resources::default(), |sum, c| {
            let r = Resources::of(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
            Resources {
                cpu: sum.cpu + r.cpu,
                memory: sum.memory + r.memory,
            }
        })
    }

    fn fits_in(&self, free: &Resources) -> bool {
        self.cpu <= free.cpu + 1e-9 && self.memory <= free.memory + 0.5
    }

    fn minus(&self, used: &Resources) -> Resources {
        Resources {
            cpu: self.cpu - used.cpu,
            memory: self.memory - used.memory,
        }
    }
}

/// A spot Node that can take pods now.
#[derive(Debug, Clone)]
struct Candidate {
    name: String,
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
    allocatable: Resources,
    /// What is left once its pods are counted (read lazily).
    free: Option<Resources>,
}

/// One pass's view of spot room.
pub struct SpotRoom {
    candidates: Vec<Candidate>,
}

impl SpotRoom {
    /// Lists the Nodes and keeps the schedulable spot ones whose offering is available.
    pub async fn survey(client: &Client, ice: &IceCache) -> Result<SpotRoom> {
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .kube("list", "nodes")?;
        Ok(SpotRoom::of(&nodes.items, ice))
    }

    pub fn of(nodes: &[Node], ice: &IceCache) -> SpotRoom {
        let candidates = nodes
            .iter()
            .filter(|n| schedulable_spot(n, ice))
            .map(|n| Candidate {
                name: n.name_any(),
                labels: n.labels().clone(),
                taints: n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default(),
                allocatable: Resources::of(n.status.as_ref().and_then(|s| s.allocatable.as_ref())),
                free: None,
            })
            .collect();
        SpotRoom { candidates }
    }

    /// Takes room for `replicas` pods of `spec`, when the candidates have it all; the
    /// names of the Nodes they would go to (first fit). Nothing is taken otherwise.
    /// Also returns how many pod LISTs it made.
    pub async fn take(
        &mut self,
        client: &Client,
        spec: &PodSpec,
        replicas: usize,
    ) -> Result<(Option<Vec<String>>, u64)> {
        let mut reads = 0;
        let wanted = Resources::requested(spec);
        let mut plan: Vec<usize> = Vec::new();
        let mut trial: BTreeMap<usize, Resources> = BTreeMap::new();
        for (i, candidate) in self.candidates.iter_mut().enumerate() {
            if plan.len() >= replicas {
                break;
            }
            if !placeable(spec, &candidate.labels, &candidate.taints) {
                continue;
            }
            if candidate.free.is_none() {
                reads += 1;
                candidate.free = Some(
                    candidate
                        .allocatable
                        .minus(&used_on(client, &candidate.name).await?),
                );
            }
            let mut free = candidate.free.expect("read above");
            while plan.len() < replicas && wanted.fits_in(&free) {
                free = free.minus(&wanted);
                plan.push(i);
            }
            trial.insert(i, free);
        }
        if plan.len() < replicas {
            return Ok((None, reads));
        }
        for (i, free) in trial {
            self.candidates[i].free = Some(free);
        }
        let mut names: Vec<String> = plan
            .iter()
            .map(|i| self.candidates[*i].name.clone())
            .collect();
        names.dedup();
        Ok((Some(names), reads))
    }
}

/// Ready, schedulable, spot, not marked by spotkube, and its offering not in the ICE
/// cache.
fn schedulable_spot(node: &Node, ice: &IceCache) -> bool {
    let labels = node.labels();
    if capacity_type(labels, None) != CapacityType::Spot {
        return false;
    }
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        return false;
    }
    let marked = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == INTERRUPTION_TAINT));
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if marked || !ready {
        return false;
    }
    match (labels.get(labels::INSTANCE_TYPE), labels.get(labels::ZONE)) {
        (Some(t), Some(z)) => !ice.is_unavailable(&Offering::new(t, z, CapacityType::Spot)),
        _ => true,
    }
}

/// Whether a pod of `spec` may go to a Node with `labels` and `taints` (nodeSelector
/// and tolerations; NoSchedule and NoExecute taints only).
fn placeable(spec: &PodSpec, labels: &BTreeMap<String, String>, taints: &[Taint]) -> bool {
    let selected = spec
        .node_selector
        .as_ref()
        .is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    selected
        && taints
            .iter()
            .filter(|t| t.effect != "PreferNoSchedule")
            .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let key = toleration
        .key
        .as_deref()
        .is_none_or(|k| k.is_empty() || k == taint.key);
    let effect = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let value = match toleration.operator.as_deref() {
        Some("Exists") => true,
        _ => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    // An empty key matches every taint only with operator Exists.
    let any_key = toleration.key.as_deref().is_none_or(str::is_empty);
    key && effect && value && (!any_key || toleration.operator.as_deref() == Some("Exists"))
}

/// What the pods bound to `node` request (finished pods left out).
async fn used_on(client: &Client, node: &str) -> Result<Resources> {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!(
            "spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed"
        )))
        .await
        .kube("list", format_args!("pods on node/{node}"))?;
    Ok(pods
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref())
        .map(Resources::requested)
        .fold(Resources::default(), |sum, r| Resources {
            cpu: sum.cpu + r.cpu,
            memory: sum.memory + r.memory,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn node(name: &str, capacity: &str, taints: serde_json::Value, ready: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": { "name": name, "labels": {
                "karpenter.sh/capacity-type": capacity,
                "node.kubernetes.io/instance-type": "m5.large",
                "topology.kubernetes.io/zone": "us-east-1a",
                "disk": "ssd",
            } },
            "spec": { "taints": taints },
            "status": {
                "allocatable": { "cpu": "2", "memory": "8Gi" },
                "conditions": [{ "type": "Ready", "status": ready }],
            },
        }))
        .unwrap()
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_ready_unmarked_spot_nodes_of_available_offerings_are_candidates() {
        let ice = IceCache::new(Duration::from_secs(180));
        let nodes = [
            node("spot", "spot", json!([]), "True"),
            node("od", "on-demand", json!([]), "True"),
            node("notready", "spot", json!([]), "False"),
            node(
                "marked",
                "spot",
                json!([{ "key": INTERRUPTION_TAINT, "effect": "NoSchedule" }]),
                "True",
            ),
        ];
        let room = SpotRoom::of(&nodes, &ice);
        let names: Vec<&str> = room.candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["spot"]);
        ice.mark(
            Offering::new("m5.large", "us-east-1a", CapacityType::Spot),
            crate::capacity::ice::Reason::CapacityError,
        );
        assert!(SpotRoom::of(&nodes, &ice).candidates.is_empty());
    }

    #[test]
    fn node_selector_and_tolerations_decide_where_a_pod_may_go() {
        let labels = node("n", "spot", json!([]), "True").labels().clone();
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("web".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let plain = spec(json!({ "containers": [] }));
        assert!(placeable(&plain, &labels, &[]));
        assert!(!placeable(&plain, &labels, std::slice::from_ref(&taint)));
        let tolerant = spec(
            json!({ "containers": [], "tolerations": [{ "key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule" }] }),
        );
        assert!(placeable(&tolerant, &labels, std::slice::from_ref(&taint)));
        let exists = spec(json!({ "containers": [], "tolerations": [{ "operator": "Exists" }] }));
        assert!(placeable(&exists, &labels, std::slice::from_ref(&taint)));
        let elsewhere = spec(json!({ "containers": [], "nodeSelector": { "disk": "hdd" } }));
        assert!(!placeable(&elsewhere, &labels, &[]));
    }

    #[test]
    fn requests_add_up_over_containers() {
        let s = spec(json!({ "containers": [
            { "name": "a", "resources": { "requests": { "cpu": "500m", "memory": "1Gi" } } },
            { "name": "b", "resources": { "requests": { "cpu": "250m" } } },
        ] }));
        let r = Resources::requested(&s);
        assert!((r.cpu - 0.75).abs() < 1e-9);
        assert_eq!(r.memory, 1024.0 * 1024.0 * 1024.0);
        assert!(r.fits_in(&Resources {
            cpu: 0.75,
            memory: 2e9
        }));
        assert!(!r.fits_in(&Resources {
            cpu: 0.7,
            memory: 2e9
        }));
    }
}
