//! Reads Nodes, Pods and Namespaces into the facts [`super::compute`] works on, from the
//! objects alone (no owner lookups): the loop reads them from watch caches, the CLI from
//! one LIST each.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use spotkube_shared::annotations::{self, ENABLED};
use spotkube_shared::node::NodeIdentity;

use super::compute::{NodeFacts, PodFacts, WorkloadId};

/// A Kubernetes quantity (`100m`, `2`, `1.5`, `64Mi`, `1G`, `129e6`) as a number of
/// base units (cores, bytes); `None` when it does not parse.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn request(container: &Container, resource: &str) -> f64 {
    container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(resource))
        .and_then(|q| parse_quantity(&q.0))
        .unwrap_or(0.0)
}

/// The pod's effective request of `resource`, as the scheduler counts it: the app
/// containers and sidecars (init containers that keep running) added up, at least each
/// plain init container's (they run one at a time, before), plus the pod overhead.
pub fn effective_request(pod: &Pod, resource: &str) -> f64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0.0;
    };
    let mut running: f64 = spec.containers.iter().map(|c| request(c, resource)).sum();
    let mut init_peak: f64 = 0.0;
    let mut sidecars: f64 = 0.0;
    for init in spec.init_containers.iter().flatten() {
        let r = request(init, resource);
        if init.restart_policy.as_deref() == Some("Always") {
            sidecars += r;
        } else {
            // An init container runs with the sidecars started before it.
            init_peak = init_peak.max(sidecars + r);
        }
    }
    running += sidecars;
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get(resource))
        .and_then(|q| parse_quantity(&q.0))
        .unwrap_or(0.0);
    running.max(init_peak) + overhead
}

/// What the computation needs of a Node.
pub fn node_facts(node: &Node) -> NodeFacts {
    let identity = NodeIdentity::of(node, None);
    let cpu = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("cpu"))
        .and_then(|q: &Quantity| parse_quantity(&q.0))
        .unwrap_or(0.0);
    NodeFacts {
        name: identity.name,
        zone: identity.zone,
        instance_type: identity.instance_type,
        capacity: identity.capacity,
        cpu,
    }
}

/// The workload a pod belongs to, from its controller reference alone. A ReplicaSet
/// named `<deployment>-<pod-template-hash>` whose pods carry that hash is a
/// Deployment's: the Deployment controller names its ReplicaSets so, and reading every
/// ReplicaSet of the cluster only to learn that would cost a watch of them all.
pub fn workload_of(pod: &Pod) -> WorkloadId {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let (kind, name) = match controller {
        None => (
            "Pod".to_string(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| o.name.strip_suffix(h.as_str())?.strip_suffix('-')) {
                Some(deployment) if !deployment.is_empty() => {
                    ("Deployment".to_string(), deployment.to_string())
                }
                _ => (o.kind.clone(), o.name.clone()),
            }
        }
        Some(o) => (o.kind.clone(), o.name.clone()),
    };
    WorkloadId {
        namespace,
        kind,
        name,
    }
}

/// What a pod's (its template's) `spotkube.io/enabled` says; `None` when absent or
/// malformed (the namespace decides).
pub fn pod_enabled(pod: &Pod) -> Option<bool> {
    enabled(pod.metadata.annotations.as_ref())
}

/// What an object's `spotkube.io/enabled` annotation says (`None`: absent or malformed).
pub fn enabled(annotations: Option<&BTreeMap<String, String>>) -> Option<bool> {
    annotations
        .and_then(|a| a.get(ENABLED))
        .and_then(|v| annotations::parse_enabled(v).ok())
}

/// Whether a pod is opted in, as the webhook decides it: its namespace is, and the pod
/// (its workload's template) does not opt out.
pub fn opted_in(namespace_enabled: bool, pod_enabled: Option<bool>) -> bool {
    namespace_enabled && pod_enabled != Some(false)
}

/// A bound pod that still runs (or is about to): what it requests and where; `None`
/// when unbound, finished or being deleted.
pub fn pod_facts(pod: &Pod) -> Option<PodFacts> {
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if pod.metadata.deletion_timestamp.is_some() || matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    Some(PodFacts {
        workload: workload_of(pod),
        node,
        cpu: effective_request(pod, "cpu"),
        memory_gib: effective_request(pod, "memory") / GIB,
        placeable: !spotkube_shared::pod::is_node_pinned(pod),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;
    use spotkube_shared::node::CapacityType;

    #[test]
    fn quantities_parse_in_every_notation() {
        for (q, want) in [
            ("100m", 0.1),
            ("2", 2.0),
            ("1.5", 1.5),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("1Gi", GIB),
            ("1G", 1e9),
            ("129e6", 129e6),
            ("500u", 0.0005),
            ("15930m", 15.93),
        ] {
            let got = parse_quantity(q).unwrap();
            assert!((got - want).abs() < 1e-9 * want.max(1.0), "{q}: {got}");
        }
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("1Xi"), None);
    }

    fn container(cpu: &str, memory: &str) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity(cpu.into())),
                    ("memory".to_string(), Quantity(memory.into())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn owned(kind: &str, name: &str, hash: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p-1".into()),
                namespace: Some("shop".into()),
                labels: hash.map(|h| BTreeMap::from([("pod-template-hash".into(), h.into())])),
                owner_references: Some(vec![OwnerReference {
                    kind: kind.into(),
                    name: name.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![container("250m", "512Mi"), container("250m", "512Mi")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn workloads_are_resolved_from_the_controller_reference() {
        let label = |p: &Pod| workload_of(p).label();
        assert_eq!(
            label(&owned("ReplicaSet", "web-5d8f7c9b4", Some("5d8f7c9b4"))),
            "deployment/web"
        );
        assert_eq!(
            label(&owned("ReplicaSet", "my-api-v2-77f", Some("77f"))),
            "deployment/my-api-v2"
        );
        // A ReplicaSet of its own (no matching hash) stays a ReplicaSet.
        assert_eq!(
            label(&owned("ReplicaSet", "standalone", None)),
            "replicaset/standalone"
        );
        assert_eq!(
            label(&owned("ReplicaSet", "web-abc", Some("xyz"))),
            "replicaset/web-abc"
        );
        assert_eq!(label(&owned("StatefulSet", "db", None)), "statefulset/db");
        assert_eq!(label(&owned("Job", "etl-29", None)), "job/etl-29");
        let mut bare = owned("Job", "x", None);
        bare.metadata.owner_references = None;
        assert_eq!(label(&bare), "pod/p-1");
        assert_eq!(workload_of(&bare).namespace, "shop");
    }

    #[test]
    fn requests_add_up_as_the_scheduler_counts_them() {
        let mut pod = owned("StatefulSet", "db", None);
        let facts = pod_facts(&pod).unwrap();
        assert!((facts.cpu - 0.5).abs() < 1e-12);
        assert!((facts.memory_gib - 1.0).abs() < 1e-12);
        assert!(facts.placeable);
        let spec = pod.spec.as_mut().unwrap();
        // A big init container raises the peak; a sidecar adds to the running sum.
        let mut sidecar = container("100m", "0");
        sidecar.restart_policy = Some("Always".into());
        spec.init_containers = Some(vec![sidecar, container("2", "0")]);
        spec.overhead = Some(BTreeMap::from([("cpu".into(), Quantity("50m".into()))]));
        assert!((effective_request(&pod, "cpu") - (2.1 + 0.05)).abs() < 1e-12);
        pod.spec.as_mut().unwrap().init_containers = Some(vec![container("100m", "0")]);
        assert!((effective_request(&pod, "cpu") - 0.55).abs() < 1e-12);
    }

    #[test]
    fn only_bound_running_pods_count() {
        let mut pod = owned("StatefulSet", "db", None);
        pod.spec.as_mut().unwrap().node_name = None;
        assert!(pod_facts(&pod).is_none(), "unbound");
        let mut done = owned("StatefulSet", "db", None);
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(pod_facts(&done).is_none(), "finished");
        let daemon = owned("DaemonSet", "agent", None);
        assert!(!pod_facts(&daemon).unwrap().placeable);
    }

    #[test]
    fn opt_in_is_the_namespace_unless_the_pod_opts_out() {
        let mut pod = owned("StatefulSet", "db", None);
        assert_eq!(pod_enabled(&pod), None);
        assert!(opted_in(true, pod_enabled(&pod)));
        assert!(!opted_in(false, pod_enabled(&pod)));
        pod.metadata.annotations = Some(BTreeMap::from([(ENABLED.into(), "false".into())]));
        assert!(!opted_in(true, pod_enabled(&pod)));
        pod.metadata.annotations = Some(BTreeMap::from([(ENABLED.into(), "maybe".into())]));
        assert!(opted_in(true, pod_enabled(&pod)));
        assert!(
            !opted_in(false, Some(true)),
            "the namespace opts in, not the pod"
        );
    }

    #[test]
    fn nodes_are_read_from_the_labels_spotkube_uses() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(BTreeMap::from([
                    ("eks.amazonaws.com/capacityType".into(), "SPOT".into()),
                    (
                        "node.kubernetes.io/instance-type".into(),
                        "m7g.large".into(),
                    ),
                    ("topology.kubernetes.io/zone".into(), "us-east-1b".into()),
                ])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([("cpu".into(), Quantity("1930m".into()))])),
                ..Default::default()
            }),
        };
        let facts = node_facts(&node);
        assert_eq!(facts.capacity, CapacityType::Spot);
        assert_eq!(facts.zone.as_deref(), Some("us-east-1b"));
        assert_eq!(facts.instance_type.as_deref(), Some("m7g.large"));
        assert!((facts.cpu - 1.93).abs() < 1e-12);
    }
}
