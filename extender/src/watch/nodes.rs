//! The Node watch: each node's facts (and so its score) in the cluster view.

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use kube::{Api, Client};
use spotkube_shared::admin::Gate;
use spotkube_shared::watch::{WatchIndex, watch};

use crate::cache::Cluster;
use crate::facts::NodeFacts;
use crate::metrics::Metrics;

/// Nodes → [`Cluster`], keeping the `cached_nodes` gauge current.
pub struct NodeIndex {
    cluster: Cluster,
    metrics: Metrics,
}

impl NodeIndex {
    pub fn new(cluster: Cluster, metrics: Metrics) -> NodeIndex {
        NodeIndex { cluster, metrics }
    }

    fn count(&self) {
        let nodes = self.cluster.node_count();
        self.metrics.cached_nodes.set(nodes as i64);
    }
}

impl WatchIndex<Node> for NodeIndex {
    /// A relist buffers facts, not whole Nodes (most of whose bytes are status).
    type Entry = (String, NodeFacts);

    fn entry(&self, node: &Node) -> Option<Self::Entry> {
        Some((node.metadata.name.clone()?, self.cluster.facts(node)))
    }

    fn reset(&self, entries: Vec<Self::Entry>) {
        self.cluster.replace_node_facts(entries);
        self.count();
        tracing::debug!(nodes = self.cluster.node_count(), "node cache relisted");
    }

    fn apply(&self, node: &Node) {
        self.cluster.apply_node(node);
        self.count();
    }

    fn delete(&self, node: &Node) {
        if let Some(name) = node.metadata.name.as_deref() {
            self.cluster.delete_node(name);
        }
        self.count();
    }
}

/// Watches all Nodes into `cluster`, forever.
pub async fn nodes(client: Client, cluster: Cluster, metrics: Metrics, ready: Gate) {
    let index = NodeIndex::new(cluster, metrics);
    watch(
        Api::all(client),
        watcher::Config::default(),
        &index,
        &ready,
        "nodes",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;
    use prometheus_client::registry::Registry;
    use spotkube_shared::admin::Readiness;

    use super::*;
    use crate::facts::Interruption;
    use crate::watch::feed;

    fn node(name: &str, instance_type: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    (
                        "node.kubernetes.io/instance-type".into(),
                        instance_type.into(),
                    ),
                    ("karpenter.sh/capacity-type".into(), "spot".into()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn index() -> (Cluster, Metrics, NodeIndex) {
        let metrics = Metrics::register(&mut Registry::default());
        let cluster = Cluster::new(None);
        let index = NodeIndex::new(cluster.clone(), metrics.clone());
        (cluster, metrics, index)
    }

    fn instance_type(cluster: &Cluster, name: &str) -> Option<String> {
        let view = cluster.view();
        view.node(name)?.facts.instance_type.clone()
    }

    #[tokio::test]
    async fn a_relist_replaces_the_nodes_once_done_and_opens_the_gate() {
        let (cluster, metrics, index) = index();
        let gate = Readiness::default().gate("test");
        cluster.replace_nodes(&[node("old", "m7g.large")]);
        feed(
            &index,
            &gate,
            vec![Event::Init, Event::InitApply(node("a", "c7g.large"))],
        )
        .await;
        // Mid-relist the previous view still answers.
        assert_eq!(cluster.node_count(), 1);
        assert!(instance_type(&cluster, "old").is_some());
        assert!(!gate.is_open());
        feed(
            &index,
            &gate,
            vec![
                Event::Init,
                Event::InitApply(node("a", "c7g.large")),
                Event::InitApply(node("b", "m7g.large")),
                Event::InitDone,
            ],
        )
        .await;
        assert!(gate.is_open());
        assert!(instance_type(&cluster, "old").is_none());
        assert_eq!(instance_type(&cluster, "a").as_deref(), Some("c7g.large"));
        assert_eq!(cluster.node_count(), 2);
        assert_eq!(metrics.cached_nodes.get(), 2);
    }

    #[tokio::test]
    async fn applies_and_deletes_keep_facts_and_the_gauge_current() {
        let (cluster, metrics, index) = index();
        let gate = Readiness::default().gate("test");
        let mut tainted = node("a", "c7g.large");
        tainted.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![k8s_openapi::api::core::v1::Taint {
                key: spotkube_shared::annotations::INTERRUPTION_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        feed(
            &index,
            &gate,
            vec![
                Event::Init,
                Event::InitDone,
                Event::Apply(node("a", "c7g.large")),
                Event::Apply(node("b", "m7g.large")),
            ],
        )
        .await;
        assert_eq!(metrics.cached_nodes.get(), 2);
        feed(
            &index,
            &gate,
            vec![Event::Apply(tainted), Event::Delete(node("b", "m7g.large"))],
        )
        .await;
        let view = cluster.view();
        let a = view.node("a").expect("a is cached");
        assert!(matches!(a.facts.interruption, Interruption::Imminent(_)));
        assert_eq!(a.score, 0, "an interrupted node scores 0");
        assert!(view.node("b").is_none());
        drop(view);
        assert_eq!(metrics.cached_nodes.get(), 1);
    }
}
