//! Node identity: which EC2 instance a Node is (from `spec.providerID`), in which zone,
//! of which instance type, and on which capacity (spot, on-demand, Fargate). The extender
//! and the controller read Nodes through [`NodeIdentity`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;

use crate::labels;

/// A parsed AWS providerID, `aws:///<zone>/<instance-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderId {
    pub zone: String,
    pub instance_id: String,
}

/// A providerID that is not `aws:///<zone>/<instance-id>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("providerID {value:?} is not aws:///<zone>/<instance-id>: {reason}")]
pub struct InvalidProviderId {
    pub value: String,
    pub reason: &'static str,
}

impl FromStr for ProviderId {
    type Err = InvalidProviderId;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidProviderId {
            value: value.to_string(),
            reason,
        };
        let rest = value
            .strip_prefix("aws://")
            .ok_or_else(|| err("scheme is not aws://"))?;
        // `aws:///zone/id` (the usual form) or `aws://zone/id` (seen on some clusters).
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let (zone, instance_id) = rest
            .split_once('/')
            .ok_or_else(|| err("missing /<instance-id>"))?;
        if zone.is_empty() {
            return Err(err("empty zone"));
        }
        if !instance_id.starts_with("i-") || instance_id.len() < 3 || instance_id.contains('/') {
            return Err(err("instance id is not i-..."));
        }
        Ok(ProviderId {
            zone: zone.to_string(),
            instance_id: instance_id.to_string(),
        })
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aws:///{}/{}", self.zone, self.instance_id)
    }
}

/// What kind of capacity a Node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapacityType {
    Spot,
    OnDemand,
    Fargate,
    /// No capacity label, or a value spotkube does not know.
    Unknown,
}

impl CapacityType {
    /// Parses a capacity label value in any of the spellings Karpenter and EKS use:
    /// `spot` / `SPOT`, `on-demand` / `ON_DEMAND` / `on_demand`, `fargate`.
    pub fn from_label_value(value: &str) -> CapacityType {
        match value.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "spot" => CapacityType::Spot,
            "on-demand" | "ondemand" => CapacityType::OnDemand,
            "fargate" => CapacityType::Fargate,
            _ => CapacityType::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::Spot => "spot",
            CapacityType::OnDemand => "on-demand",
            CapacityType::Fargate => "fargate",
            CapacityType::Unknown => "unknown",
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a label set marks a Fargate node (`eks.amazonaws.com/compute-type: fargate`).
pub fn is_fargate(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get(labels::EKS_COMPUTE_TYPE)
        .is_some_and(|v| v.eq_ignore_ascii_case(labels::FARGATE))
}

/// The capacity type a label set describes. Fargate wins; then `extra_label` (a
/// configured label, e.g. for self-managed node groups), then Karpenter's, then EKS's.
/// The first label present decides, even when its value is unknown.
pub fn capacity_type(labels: &BTreeMap<String, String>, extra_label: Option<&str>) -> CapacityType {
    if is_fargate(labels) {
        return CapacityType::Fargate;
    }
    extra_label
        .into_iter()
        .chain(labels::CAPACITY_TYPE_LABELS.iter().copied())
        .find_map(|key| labels.get(key))
        .map_or(CapacityType::Unknown, |v| CapacityType::from_label_value(v))
}

/// A read-only view of what spotkube needs to know about a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub name: String,
    /// `None` when the providerID is absent or not AWS (see [`NodeIdentity::provider_id_error`]).
    pub provider_id: Option<ProviderId>,
    /// Why the providerID did not parse, when it was present.
    pub provider_id_error: Option<InvalidProviderId>,
    pub capacity: CapacityType,
    pub instance_type: Option<String>,
    /// The zone label, else the zone from the providerID.
    pub zone: Option<String>,
}

impl NodeIdentity {
    /// Reads a Node; `capacity_label` is the configured extra capacity type label.
    pub fn of(node: &Node, capacity_label: Option<&str>) -> NodeIdentity {
        let empty = BTreeMap::new();
        let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
        let raw_provider_id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
        let (provider_id, provider_id_error) = match raw_provider_id.map(str::parse::<ProviderId>) {
            Some(Ok(id)) => (Some(id), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let zone = labels
            .get(labels::ZONE)
            .cloned()
            .or_else(|| provider_id.as_ref().map(|p| p.zone.clone()));
        NodeIdentity {
            name: node.metadata.name.clone().unwrap_or_default(),
            capacity: capacity_type(labels, capacity_label),
            instance_type: labels.get(labels::INSTANCE_TYPE).cloned(),
            zone,
            provider_id,
            provider_id_error,
        }
    }

    /// The EC2 instance id, when the providerID is an AWS one.
    pub fn instance_id(&self) -> Option<&str> {
        self.provider_id.as_ref().map(|p| p.instance_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn provider_ids_parse() {
        let id: ProviderId = "aws:///us-east-1a/i-0abc123".parse().unwrap();
        assert_eq!(id.zone, "us-east-1a");
        assert_eq!(id.instance_id, "i-0abc123");
        assert_eq!(id.to_string(), "aws:///us-east-1a/i-0abc123");
        assert_eq!(
            "aws://us-east-1b/i-1".parse::<ProviderId>().unwrap().zone,
            "us-east-1b"
        );
    }

    #[test]
    fn bad_provider_ids_say_why() {
        for (value, reason) in [
            ("gce://p/z/n", "scheme is not aws://"),
            ("aws:///us-east-1a", "missing /<instance-id>"),
            ("aws:////i-1", "empty zone"),
            ("aws:///us-east-1a/node-1", "instance id is not i-..."),
            ("aws:///us-east-1a/i-1/x", "instance id is not i-..."),
        ] {
            let err = value.parse::<ProviderId>().unwrap_err();
            assert_eq!(err.reason, reason, "{value}");
        }
    }

    #[test]
    fn capacity_type_from_any_spelling() {
        for (v, want) in [
            ("spot", CapacityType::Spot),
            ("SPOT", CapacityType::Spot),
            ("on-demand", CapacityType::OnDemand),
            ("ON_DEMAND", CapacityType::OnDemand),
            ("reserved", CapacityType::Unknown),
        ] {
            assert_eq!(CapacityType::from_label_value(v), want, "{v}");
        }
    }

    #[test]
    fn capacity_type_label_precedence() {
        let karpenter = labels(&[(labels::KARPENTER_CAPACITY_TYPE, "spot")]);
        assert_eq!(capacity_type(&karpenter, None), CapacityType::Spot);
        let eks = labels(&[(labels::EKS_CAPACITY_TYPE, "ON_DEMAND")]);
        assert_eq!(capacity_type(&eks, None), CapacityType::OnDemand);
        let custom = labels(&[
            ("acme.io/lifecycle", "spot"),
            (labels::EKS_CAPACITY_TYPE, "ON_DEMAND"),
        ]);
        assert_eq!(
            capacity_type(&custom, Some("acme.io/lifecycle")),
            CapacityType::Spot
        );
        assert_eq!(capacity_type(&custom, None), CapacityType::OnDemand);
        let fargate = labels(&[
            (labels::EKS_COMPUTE_TYPE, "fargate"),
            (labels::EKS_CAPACITY_TYPE, "SPOT"),
        ]);
        assert_eq!(capacity_type(&fargate, None), CapacityType::Fargate);
        assert_eq!(capacity_type(&BTreeMap::new(), None), CapacityType::Unknown);
    }

    #[test]
    fn node_identity_reads_labels_and_provider_id() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("ip-10-0-0-1".into()),
                labels: Some(labels(&[
                    (labels::KARPENTER_CAPACITY_TYPE, "spot"),
                    (labels::INSTANCE_TYPE, "m5.large"),
                ])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some("aws:///us-east-1c/i-0def".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = NodeIdentity::of(&node, None);
        assert_eq!(id.name, "ip-10-0-0-1");
        assert_eq!(id.capacity, CapacityType::Spot);
        assert_eq!(id.instance_type.as_deref(), Some("m5.large"));
        assert_eq!(
            id.zone.as_deref(),
            Some("us-east-1c"),
            "zone falls back to providerID"
        );
        assert_eq!(id.instance_id(), Some("i-0def"));

        let kwok = Node {
            spec: Some(NodeSpec {
                provider_id: Some("kwok://node-1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = NodeIdentity::of(&kwok, None);
        assert!(id.provider_id.is_none());
        assert!(id.provider_id_error.is_some());
    }
}
