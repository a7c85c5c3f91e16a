//! What the extender needs to know about a Node, read once per Node change.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use spotkube_shared::annotations::{INTERRUPTION, INTERRUPTION_TAINT, InterruptionNotice};
use spotkube_shared::node::{CapacityType, NodeIdentity};

/// Whether a node is being reclaimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interruption {
    None,
    /// Rebalance recommendation: elevated risk, still schedulable, scored 0.
    Rebalancing,
    /// Interruption warning, scheduled change, or a `NoSchedule`/`NoExecute` taint:
    /// filtered out. The reason goes to `FailedNodes`.
    Imminent(String),
}

/// The facts of one node that filter and prioritize use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub capacity: CapacityType,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub interruption: Interruption,
}

impl NodeFacts {
    pub fn of(node: &Node, capacity_label: Option<&str>) -> NodeFacts {
        let id = NodeIdentity::of(node, capacity_label);
        NodeFacts {
            capacity: id.capacity,
            zone: id.zone,
            instance_type: id.instance_type,
            interruption: interruption(node),
        }
    }
}

/// Reads the interruption annotation and taint; the graver of the two wins. An
/// unreadable annotation counts as imminent: spotkube wrote it because something is
/// coming, and a node wrongly avoided costs less than a pod placed on a dying node.
fn interruption(node: &Node) -> Interruption {
    let empty = BTreeMap::new();
    let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
    let from_annotation = match annotations.get(INTERRUPTION) {
        None => Interruption::None,
        Some(value) => match InterruptionNotice::from_annotation(value) {
            Ok(notice) if notice.is_imminent() => Interruption::Imminent(format!(
                "node is being interrupted ({INTERRUPTION}: {})",
                notice.kind
            )),
            Ok(_) => Interruption::Rebalancing,
            Err(e) => Interruption::Imminent(format!("node carries an unreadable {e}")),
        },
    };
    if matches!(from_annotation, Interruption::Imminent(_)) {
        return from_annotation;
    }
    let taint = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .and_then(|taints| taints.iter().find(|t| t.key == INTERRUPTION_TAINT));
    match taint.map(|t| t.effect.as_str()) {
        Some("NoSchedule") | Some("NoExecute") => Interruption::Imminent(format!(
            "node is being interrupted (taint {INTERRUPTION_TAINT})"
        )),
        Some(_) => Interruption::Rebalancing,
        None => from_annotation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};

    fn node(annotation: Option<&str>, taint: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n".into());
        n.metadata.labels = Some(
            [
                ("karpenter.sh/capacity-type".to_string(), "spot".to_string()),
                ("topology.kubernetes.io/zone".into(), "us-east-1a".into()),
                (
                    "node.kubernetes.io/instance-type".into(),
                    "c7g.xlarge".into(),
                ),
            ]
            .into(),
        );
        if let Some(a) = annotation {
            n.metadata.annotations = Some([(INTERRUPTION.to_string(), a.to_string())].into());
        }
        if let Some(effect) = taint {
            n.spec = Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: INTERRUPTION_TAINT.into(),
                    effect: effect.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
        }
        n
    }

    #[test]
    fn reads_identity_and_interruption() {
        let f = NodeFacts::of(&node(None, None), None);
        assert_eq!(f.capacity, CapacityType::Spot);
        assert_eq!(f.zone.as_deref(), Some("us-east-1a"));
        assert_eq!(f.instance_type.as_deref(), Some("c7g.xlarge"));
        assert_eq!(f.interruption, Interruption::None);

        let spot = r#"{"kind":"spot-interruption","deadline":"2026-11-22T10:02:00Z"}"#;
        assert!(
            matches!(interruption(&node(Some(spot), None)), Interruption::Imminent(r) if r.contains("spot-interruption"))
        );
        let rebalance = r#"{"kind":"rebalance-recommendation"}"#;
        assert_eq!(
            interruption(&node(Some(rebalance), None)),
            Interruption::Rebalancing
        );
        assert!(matches!(
            interruption(&node(Some("garbage"), None)),
            Interruption::Imminent(_)
        ));
        assert!(matches!(
            interruption(&node(None, Some("NoSchedule"))),
            Interruption::Imminent(_)
        ));
        assert_eq!(
            interruption(&node(None, Some("PreferNoSchedule"))),
            Interruption::Rebalancing
        );
        assert!(
            matches!(
                interruption(&node(Some(rebalance), Some("NoExecute"))),
                Interruption::Imminent(_)
            ),
            "the graver signal wins"
        );
    }
}
