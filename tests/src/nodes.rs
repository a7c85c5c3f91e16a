//! Fake EKS worker Nodes for kwok, labelled the way EKS, Karpenter and Fargate label them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec as K8sNodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ObjectMeta, PostParams};
use serde::Deserialize;

use crate::RigError;
use crate::kwok::MANAGED_ANNOTATION;

pub const REGION: &str = "us-east-1";
/// The three AZs every rig scenario spreads over.
pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// vCPU and memory of one instance type, from the price snapshot.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct InstanceSpec {
    pub vcpu: u32,
    pub memory_gib: f64,
}

#[derive(Debug, Deserialize)]
struct Snapshot {
    instance_specs: BTreeMap<String, InstanceSpec>,
}

/// The price snapshot's path: `$SPOTKUBE_PRICE_SNAPSHOT`, else the one the controller
/// embeds, `<workspace>/controller/data/aws-price-snapshot.json`.
pub fn price_snapshot_path() -> PathBuf {
    std::env::var_os("SPOTKUBE_PRICE_SNAPSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::tools::workspace_root().join("controller/data/aws-price-snapshot.json")
        })
}

/// vCPU and memory of `instance_type` as the snapshot records them.
pub fn instance_spec(instance_type: &str) -> Result<InstanceSpec, RigError> {
    static SPECS: OnceLock<Result<BTreeMap<String, InstanceSpec>, String>> = OnceLock::new();
    let specs = SPECS.get_or_init(|| {
        let path = price_snapshot_path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str::<Snapshot>(&text)
            .map(|s| s.instance_specs)
            .map_err(|e| format!("{}: {e}", path.display()))
    });
    let specs = specs.as_ref().map_err(|e| RigError::Snapshot(e.clone()))?;
    specs.get(instance_type).copied().ok_or_else(|| {
        RigError::Snapshot(format!(
            "instance type {instance_type} is not in the snapshot"
        ))
    })
}

/// Graviton families carry a `g` after the generation digit (c7g, m8gd, r7g, t4g) and a1.
fn architecture(instance_type: &str) -> &'static str {
    let family = instance_type.split('.').next().unwrap_or_default();
    let after_digit: String = family
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .skip(1)
        .collect();
    if family == "a1" || after_digit.starts_with('g') {
        "arm64"
    } else {
        "amd64"
    }
}

/// Spot or on-demand EC2 capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    Spot,
    OnDemand,
}

/// What kind of worker a fake Node pretends to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// An EC2 instance (managed node group / Karpenter) of `instance_type`.
    Ec2 {
        instance_type: String,
        capacity: Capacity,
    },
    /// A Fargate micro-VM (one pod per node on EKS; here sized like a small VM).
    Fargate,
}

/// A fake Node to create. Build with [`FakeNode::spot`], [`FakeNode::on_demand`] or
/// [`FakeNode::fargate`], then adjust fields.
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub zone: String,
    pub kind: NodeKind,
    /// The EC2 instance id in `spec.providerID` (`aws:///<zone>/<instance-id>`); use the
    /// id moto generated when a test needs the instance to exist in AWS too.
    pub instance_id: String,
    pub max_pods: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

fn random_instance_id() -> String {
    format!("i-0{:016x}", rand::random::<u64>())
}

impl FakeNode {
    /// An EC2 node; the name follows EKS (`ip-10-x-y-z.ec2.internal`).
    pub fn ec2(instance_type: &str, zone: &str, capacity: Capacity) -> Self {
        let octets: [u8; 3] = rand::random();
        Self {
            name: format!(
                "ip-10-{}-{}-{}.ec2.internal",
                octets[0],
                octets[1],
                octets[2].max(1)
            ),
            zone: zone.into(),
            kind: NodeKind::Ec2 {
                instance_type: instance_type.into(),
                capacity,
            },
            instance_id: random_instance_id(),
            max_pods: 110,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    pub fn spot(instance_type: &str, zone: &str) -> Self {
        Self::ec2(instance_type, zone, Capacity::Spot)
    }

    pub fn on_demand(instance_type: &str, zone: &str) -> Self {
        Self::ec2(instance_type, zone, Capacity::OnDemand)
    }

    /// A Fargate node with EKS's labels and its `eks.amazonaws.com/compute-type=fargate:NoSchedule` taint.
    pub fn fargate(zone: &str) -> Self {
        let octets: [u8; 3] = rand::random();
        Self {
            name: format!(
                "fargate-ip-10-{}-{}-{}.ec2.internal",
                octets[0],
                octets[1],
                octets[2].max(1)
            ),
            zone: zone.into(),
            kind: NodeKind::Fargate,
            instance_id: random_instance_id(),
            max_pods: 1,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            taints: vec![Taint {
                key: "eks.amazonaws.com/compute-type".into(),
                value: Some("fargate".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }],
        }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = id.into();
        self
    }

    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn with_annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn with_taint(mut self, key: &str, value: Option<&str>, effect: &str) -> Self {
        self.taints.push(Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        });
        self
    }

    pub fn with_max_pods(mut self, max_pods: u32) -> Self {
        self.max_pods = max_pods;
        self
    }

    /// `aws:///<zone>/<instance-id>`.
    pub fn provider_id(&self) -> String {
        format!("aws:///{}/{}", self.zone, self.instance_id)
    }

    /// The Node object, with the labels EKS and Karpenter put on real nodes.
    pub fn to_node(&self) -> Result<Node, RigError> {
        let mut labels: BTreeMap<String, String> = BTreeMap::from([
            ("kubernetes.io/hostname".into(), self.name.clone()),
            ("kubernetes.io/os".into(), "linux".into()),
            ("topology.kubernetes.io/region".into(), REGION.into()),
            ("topology.kubernetes.io/zone".into(), self.zone.clone()),
            (
                "failure-domain.beta.kubernetes.io/zone".into(),
                self.zone.clone(),
            ),
            ("type".into(), "kwok".into()),
        ]);
        let (cpu, memory_gib) = match &self.kind {
            NodeKind::Ec2 {
                instance_type,
                capacity,
            } => {
                let spec = instance_spec(instance_type)?;
                labels.insert(
                    "node.kubernetes.io/instance-type".into(),
                    instance_type.clone(),
                );
                labels.insert(
                    "beta.kubernetes.io/instance-type".into(),
                    instance_type.clone(),
                );
                labels.insert(
                    "kubernetes.io/arch".into(),
                    architecture(instance_type).into(),
                );
                let (eks, karpenter) = match capacity {
                    Capacity::Spot => ("SPOT", "spot"),
                    Capacity::OnDemand => ("ON_DEMAND", "on-demand"),
                };
                labels.insert("eks.amazonaws.com/capacityType".into(), eks.into());
                labels.insert("karpenter.sh/capacity-type".into(), karpenter.into());
                (spec.vcpu, spec.memory_gib)
            }
            NodeKind::Fargate => {
                labels.insert("eks.amazonaws.com/compute-type".into(), "fargate".into());
                labels.insert("kubernetes.io/arch".into(), "amd64".into());
                (2, 4.0)
            }
        };
        labels.extend(self.labels.clone());
        let mut annotations = BTreeMap::from([
            (
                MANAGED_ANNOTATION.0.to_string(),
                MANAGED_ANNOTATION.1.to_string(),
            ),
            ("node.alpha.kubernetes.io/ttl".into(), "0".into()),
        ]);
        annotations.extend(self.annotations.clone());
        // Allocatable keeps back what kubelet and the system reserve on EKS (roughly).
        let memory_mib = (memory_gib * 1024.0) as u64;
        let reserved_mib = 255 + 11 * u64::from(self.max_pods).min(110);
        let capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(format!("{memory_mib}Mi"))),
            ("pods".to_string(), Quantity(self.max_pods.to_string())),
            ("ephemeral-storage".to_string(), Quantity("20Gi".into())),
        ]);
        let allocatable = BTreeMap::from([
            ("cpu".to_string(), Quantity(format!("{}m", cpu * 1000 - 70))),
            (
                "memory".to_string(),
                Quantity(format!(
                    "{}Mi",
                    memory_mib.saturating_sub(reserved_mib).max(256)
                )),
            ),
            ("pods".to_string(), Quantity(self.max_pods.to_string())),
            ("ephemeral-storage".to_string(), Quantity("18Gi".into())),
        ]);
        Ok(Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(K8sNodeSpec {
                provider_id: Some(self.provider_id()),
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                capacity: Some(capacity),
                allocatable: Some(allocatable),
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: node_ip(&self.name),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: self.name.clone(),
                    },
                ]),
                ..Default::default()
            }),
        })
    }

    /// Creates the Node; kwok marks it Ready within a second or two.
    pub async fn create(&self, client: &kube::Client) -> Result<Node, RigError> {
        let api: Api<Node> = Api::all(client.clone());
        api.create(&PostParams::default(), &self.to_node()?)
            .await
            .map_err(|e| RigError::Kube(format!("create node {}: {e}", self.name)))
    }
}

/// `ip-10-1-2-3.ec2.internal` → `10.1.2.3`; anything else gets a fixed address.
fn node_ip(name: &str) -> String {
    let stem = name
        .trim_start_matches("fargate-")
        .trim_start_matches("ip-");
    let stem = stem.split('.').next().unwrap_or_default();
    let ip = stem.replace('-', ".");
    if ip.parse::<std::net::Ipv4Addr>().is_ok() {
        ip
    } else {
        "10.0.0.1".into()
    }
}

/// Whether the Node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What the built-in price snapshot ranks first in every zone (arm64 c/m/r 7g/8g, 2–16
/// vCPU, band ≤ 2, by spot $ per vCPU-hour; see the controller's snapshot test).
pub const SNAPSHOT_TOP6: [&str; 6] = [
    "c7g.4xlarge",
    "c7g.2xlarge",
    "c8g.xlarge",
    "c7g.xlarge",
    "m7g.2xlarge",
    "m7g.large",
];

/// The instance types of `zone` in `ranking`, best first.
pub fn ranked_types(ranking: &spotkube_shared::ranking::Ranking, zone: &str) -> Vec<String> {
    ranking.zones[zone]
        .iter()
        .map(|e| e.instance_type.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graviton_types_are_arm64() {
        for t in [
            "c7g.large",
            "m8gd.xlarge",
            "r7g.2xlarge",
            "t4g.small",
            "a1.large",
            "x2gd.medium",
        ] {
            assert_eq!(architecture(t), "arm64", "{t}");
        }
        for t in [
            "m5.large",
            "c7i.large",
            "g5.xlarge",
            "c6gn.large".replace("gn", "n").as_str(),
        ] {
            assert_eq!(architecture(t), "amd64", "{t}");
        }
    }

    #[test]
    fn node_ip_follows_eks_names() {
        assert_eq!(node_ip("ip-10-1-2-3.ec2.internal"), "10.1.2.3");
        assert_eq!(node_ip("fargate-ip-10-4-5-6.ec2.internal"), "10.4.5.6");
        assert_eq!(node_ip("custom"), "10.0.0.1");
    }

    #[test]
    fn node_is_sized_from_the_snapshot() {
        let node = FakeNode::spot("m7g.xlarge", "us-east-1b")
            .with_instance_id("i-0123")
            .to_node()
            .unwrap();
        let status = node.status.unwrap();
        assert_eq!(status.capacity.unwrap()["cpu"].0, "4");
        assert_eq!(status.allocatable.as_ref().unwrap()["cpu"].0, "3930m");
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["karpenter.sh/capacity-type"], "spot");
        assert_eq!(labels["eks.amazonaws.com/capacityType"], "SPOT");
        assert_eq!(labels["topology.kubernetes.io/zone"], "us-east-1b");
        assert_eq!(
            node.spec.unwrap().provider_id.unwrap(),
            "aws:///us-east-1b/i-0123"
        );
    }
}
