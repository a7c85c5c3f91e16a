//! EC2 instance id → Node name, fed by a watch on Nodes (through the shared
//! [`spotkube_shared::watch`] driver) and keyed on `spec.providerID`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use kube::{Api, Client};
use spotkube_shared::admin::Gate;
use spotkube_shared::node::ProviderId;
use spotkube_shared::watch::{self, WatchIndex};

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
    /// Every Node's name, AWS or not (a scaled surge ends once its Node is gone).
    names: std::collections::HashSet<String>,
    /// Nodes with a capacity request or that are an on-demand fallback (for the
    /// capacity loop).
    capacity: std::collections::BTreeSet<String>,
}

/// What the index keeps of one Node.
pub struct NodeEntry {
    name: String,
    instance: Option<String>,
    marked: bool,
    capacity: bool,
}

fn is_marked(node: &Node) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(spotkube_shared::annotations::INTERRUPTION))
}

fn has_capacity_work(node: &Node) -> bool {
    node.metadata.annotations.as_ref().is_some_and(|a| {
        a.contains_key(spotkube_shared::annotations::CAPACITY_REQUEST)
            || a.contains_key(spotkube_shared::annotations::FALLBACK_FOR)
    })
}

/// The EC2 instance behind `node`, from its providerID.
fn instance_of(node: &Node) -> Option<String> {
    let provider_id = node.spec.as_ref()?.provider_id.as_deref()?;
    Some(provider_id.parse::<ProviderId>().ok()?.instance_id)
}

impl Index {
    fn remove_node(&mut self, name: &str) {
        self.marked.remove(name);
        self.capacity.remove(name);
        self.names.remove(name);
        if let Some(instance) = self.by_node.remove(name) {
            self.by_instance.remove(&instance);
        }
    }

    fn apply_entry(&mut self, entry: NodeEntry) {
        match entry.instance {
            Some(instance) => self.insert(instance, entry.name.clone()),
            None => self.remove_node(&entry.name),
        }
        self.names.insert(entry.name.clone());
        if entry.capacity {
            self.capacity.insert(entry.name.clone());
        } else {
            self.capacity.remove(&entry.name);
        }
        if entry.marked {
            self.marked.insert(entry.name);
        } else {
            self.marked.remove(&entry.name);
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

    /// Nodes with a capacity request, or on-demand fallback Nodes.
    pub fn with_capacity_work(&self) -> Vec<String> {
        let index = self.inner.read().expect("nodes index lock");
        index.capacity.iter().cloned().collect()
    }

    /// Whether Node `name` carries spotkube's interruption notice.
    pub fn is_marked(&self, name: &str) -> bool {
        let index = self.inner.read().expect("nodes index lock");
        index.marked.contains(name)
    }

    /// Whether Node `name` exists (as of the last watch event).
    pub fn exists(&self, name: &str) -> bool {
        let index = self.inner.read().expect("nodes index lock");
        index.names.contains(name)
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .expect("nodes index lock")
            .by_instance
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watches Nodes forever; opens `synced` after the first full list.
    pub async fn run(self, client: Client, synced: Gate) {
        let nodes: Api<Node> = Api::all(client);
        watch::watch(
            nodes,
            watcher::Config::default(),
            &self,
            &synced,
            "nodes index",
        )
        .await;
    }
}

impl WatchIndex<Node> for NodesIndex {
    type Entry = NodeEntry;

    fn entry(&self, node: &Node) -> Option<NodeEntry> {
        Some(NodeEntry {
            name: node.metadata.name.clone()?,
            instance: instance_of(node),
            marked: is_marked(node),
            capacity: has_capacity_work(node),
        })
    }

    fn reset(&self, entries: Vec<NodeEntry>) {
        let mut fresh = Index::default();
        for entry in entries {
            fresh.apply_entry(entry);
        }
        *self.inner.write().expect("nodes index lock") = fresh;
    }

    fn apply(&self, node: &Node) {
        if let Some(entry) = self.entry(node) {
            self.inner
                .write()
                .expect("nodes index lock")
                .apply_entry(entry);
        }
    }

    fn delete(&self, node: &Node) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        self.inner
            .write()
            .expect("nodes index lock")
            .remove_node(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;
    use spotkube_shared::admin::Readiness;

    /// Feeds watch events through the shared driver, as the Node watch does.
    fn feed(index: &NodesIndex, events: impl IntoIterator<Item = Event<Node>>) {
        let gate = Readiness::default().gate("nodes index");
        let events = futures::stream::iter(events.into_iter().map(Ok));
        futures::executor::block_on(watch::drive(events, index, &gate, "nodes index"));
    }

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
        feed(
            &index,
            [
                Event::Apply(node("a", Some("aws:///us-east-1a/i-0a1b2c3d4e5f60718"))),
                Event::Apply(node("kind", Some("kind://docker/x"))),
                Event::Apply(node("b", None)),
            ],
        );
        assert_eq!(index.node_for("i-0a1b2c3d4e5f60718").as_deref(), Some("a"));
        assert_eq!(index.len(), 1);
        feed(
            &index,
            [Event::Apply(node(
                "a",
                Some("aws:///us-east-1a/i-0000000000000000a"),
            ))],
        );
        assert_eq!(index.node_for("i-0a1b2c3d4e5f60718"), None);
        assert_eq!(index.node_for("i-0000000000000000a").as_deref(), Some("a"));
        assert!(index.exists("a") && index.exists("kind") && index.exists("b"));
        feed(&index, [Event::Delete(node("a", None))]);
        assert_eq!(index.len(), 0);
        assert!(!index.exists("a"));
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
        feed(&index, [Event::Apply(marked)]);
        assert_eq!(index.marked(), vec!["a".to_string()]);
        feed(
            &index,
            [Event::Apply(node("a", Some("aws:///z/i-11111111")))],
        );
        assert!(index.marked().is_empty());
    }

    #[test]
    fn a_relist_replaces_everything() {
        let index = NodesIndex::default();
        feed(
            &index,
            [Event::Apply(node("gone", Some("aws:///z/i-11111111")))],
        );
        let relist = || {
            [
                Event::Init,
                Event::InitApply(node("new", Some("aws:///z/i-22222222"))),
            ]
        };
        feed(&index, relist());
        // Until the relist is done, the old view answers.
        assert_eq!(index.node_for("i-11111111").as_deref(), Some("gone"));
        feed(&index, relist().into_iter().chain([Event::InitDone]));
        assert_eq!(index.node_for("i-11111111"), None);
        assert_eq!(index.node_for("i-22222222").as_deref(), Some("new"));
    }
}
