//! The kube-scheduler extender v1 wire types (`k8s.io/kube-scheduler/extender/v1`).
//!
//! The Go types carry no JSON tags, so every key is the Go field name in PascalCase
//! (`Pod`, `Nodes`, `NodeNames`, `FailedNodes`, `Host`, `Score`, ...). The scheduler
//! sends `null` for whichever of `Nodes` / `NodeNames` is unused: with
//! `nodeCacheCapable: true` only `NodeNames`, otherwise only `Nodes` (a full `NodeList`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde::{Deserialize, Serialize};

/// `extenderv1.MaxExtenderPriority`: the highest score an extender may give a node.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;
/// `extenderv1.MinExtenderPriority`.
pub const MIN_EXTENDER_PRIORITY: i64 = 0;

/// `v1.NodeList` as the scheduler sends it: only `metadata` and `items` matter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ListMeta>,
    #[serde(default)]
    pub items: Vec<Node>,
}

/// `ExtenderArgs`: the body of every filter / prioritize call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderArgs {
    /// The pod being scheduled.
    pub pod: Pod,
    /// Candidate nodes when the extender is not node-cache capable.
    #[serde(default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names when the extender is node-cache capable.
    #[serde(default)]
    pub node_names: Option<Vec<String>>,
}

/// `FailedNodesMap`: node name → reason it failed.
pub type FailedNodesMap = BTreeMap<String, String>;

/// `ExtenderFilterResult`: the answer to a filter call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    /// Nodes that passed (when the request carried `Nodes`).
    #[serde(default)]
    pub nodes: Option<NodeList>,
    /// Names of the nodes that passed (when the request carried `NodeNames`).
    #[serde(default)]
    pub node_names: Option<Vec<String>>,
    /// Nodes that failed, with the reason; preemption may still help them.
    #[serde(default)]
    pub failed_nodes: FailedNodesMap,
    /// Nodes that failed and that preemption cannot help.
    #[serde(default)]
    pub failed_and_unresolvable_nodes: FailedNodesMap,
    /// A non-empty error fails the whole call (we never set it for per-node problems).
    #[serde(default)]
    pub error: String,
}

/// `HostPriority`: one node's score, `0..=MAX_EXTENDER_PRIORITY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority {
    pub host: String,
    pub score: i64,
}

/// `HostPriorityList`: the answer to a prioritize call.
pub type HostPriorityList = Vec<HostPriority>;

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/fixtures/extender");

    fn fixture(name: &str) -> ExtenderArgs {
        let path = format!("{FIXTURES}/{name}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn full_node_fixtures_carry_nodes_and_null_names() {
        for name in ["filter-full-nodes.json", "prioritize-full-nodes.json"] {
            let args = fixture(name);
            assert!(args.node_names.is_none(), "{name}");
            let nodes = args.nodes.expect("Nodes");
            let names: Vec<_> = nodes
                .items
                .iter()
                .map(|n| n.metadata.name.clone().unwrap())
                .collect();
            assert_eq!(names, ["fake-node-1", "fake-node-2", "fake-node-3"]);
            assert_eq!(args.pod.metadata.namespace.as_deref(), Some("demo"));
        }
    }

    #[test]
    fn node_name_fixtures_carry_names_and_null_nodes() {
        for name in ["filter-node-names.json", "prioritize-node-names.json"] {
            let args = fixture(name);
            assert!(args.nodes.is_none(), "{name}");
            assert_eq!(
                args.node_names.unwrap(),
                ["fake-node-1", "fake-node-2", "fake-node-3"]
            );
        }
    }

    #[test]
    fn results_use_go_field_names() {
        let result = ExtenderFilterResult {
            node_names: Some(vec!["a".into()]),
            failed_nodes: [("b".to_string(), "interrupted".to_string())].into(),
            ..Default::default()
        };
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "Nodes": null, "NodeNames": ["a"], "FailedNodes": {"b": "interrupted"},
                "FailedAndUnresolvableNodes": {}, "Error": ""
            })
        );
        let prio = serde_json::to_value(vec![HostPriority {
            host: "a".into(),
            score: 10,
        }])
        .unwrap();
        assert_eq!(prio, serde_json::json!([{"Host": "a", "Score": 10}]));
    }

    #[test]
    fn args_use_go_field_names() {
        let args: ExtenderArgs = serde_json::from_str(
            r#"{"Pod":{"metadata":{"name":"p"}},"Nodes":null,"NodeNames":["n"]}"#,
        )
        .unwrap();
        assert_eq!(args.node_names.unwrap(), ["n"]);
        assert!(serde_json::from_str::<ExtenderArgs>(r#"{"pod":{}}"#).is_err());
    }
}
