//! EC2 instance id → Node name, fed by a watch on Nodes and keyed on `spec.providerID`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use spotkube_shared::admin::Gate;
use spotkube_shared::node::ProviderId;

/// The index, shared by the watcher task and the intake.
#[derive(Clone, Default)]
pub struct NodesIndex {
    inner: Arc<RwLock<Index>>,
}

#[derive(Default)]
struct Index {
    by_instance: HashMap<String, String>,
    /// Node name → instance id, so a deleted or re-IDed Node leaves no stale entry.
    by_node: HashMap<String, String>,
    /// Nodes carrying spotkube's interruption notice (for the drain reconcile).
    marked: std::collections::BTreeSet<String>,
    /// The Nodes of a relist in progress (swapped in at `InitDone`).
    relist: Option<Vec<Node>>,
}

fn is_marked(node: &Node) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(spotkube_shared::annotations::INTERRUPTION))
}

fn instance_of(node: &Node) -> Option<(String, String)> {
    let name = node.metadata.name.clone()?;
    let provider_id = node.spec.as_ref()?.provider_id.as_deref()?;
    let id = provider_id.parse::<ProviderId>().ok()?;
    Some((id.instance_id, name))
}

impl Index {
    fn remove_node(&mut self, name: &str) {
        self.marked.remove(name);
        if let Some(instance) = self.by_node.remove(name) {
            self.by_instance.remove(&instance);
        }
    }

    fn apply_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        match instance_of(node) {
            Some((instance, name)) => self.insert(instance, name),
            None => self.remove_node(&name),
        }
        if is_marked(node) {
            self.marked.insert(name);
        } else {
            self.marked.remove(&name);
        }
    }

    fn insert(&mut self, instance: String, name: String) {
        self.remove_node(&name);
        self.by_node.insert(name.clone(), instance.clone());
        self.by_instance.insert(instance, name);
    }
}

impl NodesIndex {
    /// The Node running `instance_id`, if it belongs to this cluster.
    pub fn node_for(&self, instance_id: &str) -> Option<String> {
        let index = self.inner.read().expect("nodes index lock");
        index.by_instance.get(instance_id).cloned()
    }

    /// Nodes carrying spotkube's interruption notice.
    pub fn marked(&self) -> Vec<String> {
        let index = self.inner.read().expect("nodes index lock");
        index.marked.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .expect("nodes index lock")
            .by_instance
            .len()
    }

    /// Applies one watcher event.
    pub fn apply(&self, event: Event<Node>) {
        let mut index = self.inner.write().expect("nodes index lock");
        match event {
            Event::Apply(node) => index.apply_node(&node),
            Event::Delete(node) => {
                index.remove_node(node.metadata.name.as_deref().unwrap_or_default())
            }
            Event::Init => index.relist = Some(Vec::new()),
            Event::InitApply(node) => {
                if let Some(pending) = index.relist.as_mut() {
                    pending.push(node);
                }
            }
            Event::InitDone => {
                let nodes = index.relist.take().unwrap_or_default();
                index.by_instance.clear();
                index.by_node.clear();
                index.marked.clear();
                for node in &nodes {
                    index.apply_node(node);
                }
            }
        }
    }

    /// Watches Nodes until the stream ends; opens `synced` after the first full list.
    pub async fn run(self, client: Client, synced: Gate) {
        let nodes: Api<Node> = Api::all(client);
        let mut stream = watcher(nodes).boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    let done = matches!(event, Event::InitDone);
                    self.apply(event);
                    if done {
                        synced.open();
                        tracing::debug!(nodes = self.len(), "nodes index synced");
                    }
                }
                Err(error) => tracing::warn!(%error, "node watch error (retrying)"),
            }
        }
    }
}

fn watcher(
    nodes: Api<Node>,
) -> impl futures::Stream<Item = Result<Event<Node>, watcher::Error>> + Send {
    watcher::watcher(nodes, watcher::Config::default()).default_backoff()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    fn node(name: &str, provider_id: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: provider_id.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn maps_instances_to_nodes_and_forgets_deleted_and_changed_ones() {
        let index = NodesIndex::default();
        index.apply(Event::Apply(node(
            "a",
            Some("aws:///us-east-1a/i-0a1b2c3d4e5f60718"),
        )));
        index.apply(Event::Apply(node("kind", Some("kind://docker/x"))));
        index.apply(Event::Apply(node("b", None)));
        assert_eq!(index.node_for("i-0a1b2c3d4e5f60718").as_deref(), Some("a"));
        assert_eq!(index.len(), 1);
        index.apply(Event::Apply(node(
            "a",
            Some("aws:///us-east-1a/i-0000000000000000a"),
        )));
        assert_eq!(index.node_for("i-0a1b2c3d4e5f60718"), None);
        assert_eq!(index.node_for("i-0000000000000000a").as_deref(), Some("a"));
        index.apply(Event::Delete(node("a", None)));
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn tracks_nodes_carrying_a_notice() {
        let index = NodesIndex::default();
        let mut marked = node("a", Some("aws:///z/i-11111111"));
        marked.metadata.annotations = Some(
            [(
                spotkube_shared::annotations::INTERRUPTION.to_string(),
                "{}".to_string(),
            )]
            .into(),
        );
        index.apply(Event::Apply(marked));
        assert_eq!(index.marked(), vec!["a".to_string()]);
        index.apply(Event::Apply(node("a", Some("aws:///z/i-11111111"))));
        assert!(index.marked().is_empty());
    }

    #[test]
    fn a_relist_replaces_everything() {
        let index = NodesIndex::default();
        index.apply(Event::Apply(node("gone", Some("aws:///z/i-11111111"))));
        index.apply(Event::Init);
        index.apply(Event::InitApply(node("new", Some("aws:///z/i-22222222"))));
        // Until the relist is done, the old view answers.
        assert_eq!(index.node_for("i-11111111").as_deref(), Some("gone"));
        index.apply(Event::InitDone);
        assert_eq!(index.node_for("i-11111111"), None);
        assert_eq!(index.node_for("i-22222222").as_deref(), Some("new"));
    }
}
