//! The extender's view of the cluster: node facts with their precomputed scores, the
//! namespaces' policy annotations, and the current ranking. Watches feed it
//! ([`crate::watch`]); requests only read it, under a read lock, without allocating.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Node;
use spotkube_shared::node::CapacityType;
use spotkube_shared::ranking::{self, Ranking, Standing};

use crate::facts::{Interruption, NodeFacts};

/// A cached node: its facts and its prioritize score under the current ranking.
#[derive(Debug, Clone)]
pub struct CachedNode {
    pub facts: NodeFacts,
    pub score: i64,
}

/// `(zone, instance type)` → rank, built once per ranking.
#[derive(Debug, Default)]
pub struct RankIndex {
    ranks: HashMap<String, HashMap<String, u32>>,
    present: bool,
}

impl RankIndex {
    pub fn of(ranking: Option<&Ranking>) -> RankIndex {
        let Some(ranking) = ranking else {
            return RankIndex::default();
        };
        RankIndex {
            present: true,
            ranks: ranking
                .zones
                .iter()
                .map(|(zone, entries)| {
                    let by_type = entries
                        .iter()
                        .map(|e| (e.instance_type.clone(), e.rank))
                        .collect();
                    (zone.clone(), by_type)
                })
                .collect(),
        }
    }

    pub fn is_present(&self) -> bool {
        self.present
    }

    /// Where a node stands; see [`ranking::score`] for what each standing scores.
    pub fn standing(&self, facts: &NodeFacts) -> Standing {
        if facts.interruption != Interruption::None {
            return Standing::Rebalancing;
        }
        if !self.present {
            return Standing::NoRanking;
        }
        if facts.capacity != CapacityType::Spot {
            return Standing::OnDemand;
        }
        let rank = facts
            .zone
            .as_ref()
            .zip(facts.instance_type.as_ref())
            .and_then(|(zone, instance_type)| {
                self.ranks.get(zone.as_str())?.get(instance_type.as_str())
            });
        match rank {
            Some(&rank) => Standing::Ranked { rank },
            None => Standing::UnrankedSpot,
        }
    }

    pub fn score(&self, facts: &NodeFacts) -> i64 {
        ranking::score(self.standing(facts))
    }
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, CachedNode>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    ranking: Option<Arc<Ranking>>,
    index: RankIndex,
}

/// Shared, cheaply cloneable cluster view.
#[derive(Clone, Default)]
pub struct Cluster {
    inner: Arc<RwLock<Inner>>,
    capacity_label: Option<Arc<str>>,
}

/// A read guard over the cluster view, held for the duration of one request.
pub struct View<'a> {
    inner: std::sync::RwLockReadGuard<'a, Inner>,
}

impl View<'_> {
    pub fn node(&self, name: &str) -> Option<&CachedNode> {
        self.inner.nodes.get(name)
    }
    pub fn namespace_annotations(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.inner.namespaces.get(namespace)
    }
    pub fn index(&self) -> &RankIndex {
        &self.inner.index
    }
}

impl Cluster {
    pub fn new(capacity_label: Option<String>) -> Cluster {
        Cluster {
            inner: Arc::default(),
            capacity_label: capacity_label.map(Arc::from),
        }
    }

    pub fn capacity_label(&self) -> Option<&str> {
        self.capacity_label.as_deref()
    }

    pub fn view(&self) -> View<'_> {
        View {
            inner: self.inner.read().expect("cluster lock"),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("cluster lock")
    }

    pub fn facts(&self, node: &Node) -> NodeFacts {
        NodeFacts::of(node, self.capacity_label())
    }

    /// Adds or replaces a node.
    pub fn apply_node(&self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let facts = self.facts(node);
        let mut inner = self.write();
        let score = inner.index.score(&facts);
        inner.nodes.insert(name, CachedNode { facts, score });
    }

    pub fn delete_node(&self, name: &str) {
        self.write().nodes.remove(name);
    }

    /// Replaces every node with `nodes`.
    pub fn replace_nodes(&self, nodes: &[Node]) {
        self.replace_node_facts(
            nodes
                .iter()
                .filter_map(|n| Some((n.metadata.name.clone()?, self.facts(n))))
                .collect(),
        );
    }

    /// Replaces every node with already read facts (a watch relist completed: the
    /// watch buffers facts, not whole Nodes). Scores are computed under the lock so they
    /// match the ranking in place.
    pub fn replace_node_facts(&self, nodes: Vec<(String, NodeFacts)>) {
        let mut inner = self.write();
        let index = &inner.index;
        let map = nodes
            .into_iter()
            .map(|(name, facts)| {
                let score = index.score(&facts);
                (name, CachedNode { facts, score })
            })
            .collect();
        inner.nodes = map;
    }

    pub fn node_count(&self) -> usize {
        self.view().inner.nodes.len()
    }

    pub fn set_namespace(&self, name: &str, annotations: BTreeMap<String, String>) {
        self.write()
            .namespaces
            .insert(name.to_string(), annotations);
    }

    pub fn delete_namespace(&self, name: &str) {
        self.write().namespaces.remove(name);
    }

    pub fn replace_namespaces(&self, all: HashMap<String, BTreeMap<String, String>>) {
        self.write().namespaces = all;
    }

    /// Installs a ranking (or none) and rescores every cached node.
    pub fn set_ranking(&self, ranking: Option<Ranking>) {
        let index = RankIndex::of(ranking.as_ref());
        let mut inner = self.write();
        for node in inner.nodes.values_mut() {
            node.score = index.score(&node.facts);
        }
        inner.index = index;
        inner.ranking = ranking.map(Arc::new);
    }

    pub fn ranking(&self) -> Option<Arc<Ranking>> {
        self.view().inner.ranking.clone()
    }
}
