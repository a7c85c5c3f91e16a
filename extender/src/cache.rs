//! The extender's view of the cluster: node facts with their precomputed scores, the
//! namespaces' policy annotations, and the current ranking. Watches feed it
//! ([`crate::watch`]); requests only read it, under a read lock, without allocating.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use spotkube_shared::node::CapacityType;
use spotkube_shared::ranking::{self, Ranking, Standing};

use crate::facts::{Interruption, NodeFacts};

/// A cached node: its facts and its prioritize score under the current ranking.
#[derive(Debug, Clone)]
pub struct CachedNode {
    pub facts: NodeFacts,
    /// The score when it was computed; see [`CachedNode::score_at`].
    pub score: i64,
    /// Set while an unavailable mark holds the node unranked: when the mark lapses and
    /// the score from then on (a lapse is no watch event, so nothing rescores).
    pub lapse: Option<(Timestamp, i64)>,
}

impl CachedNode {
    fn new(facts: NodeFacts, index: &RankIndex, now: Timestamp) -> CachedNode {
        let (score, lapse) = index.scored(&facts, now);
        CachedNode {
            facts,
            score,
            lapse,
        }
    }

    /// The score at `now`.
    pub fn score_at(&self, now: Timestamp) -> i64 {
        match self.lapse {
            Some((at, after)) if now >= at => after,
            _ => self.score,
        }
    }
}

/// `(zone, instance type)` → rank, built once per ranking, with the ranking's
/// unavailable spot offerings.
#[derive(Debug, Default)]
pub struct RankIndex {
    ranks: HashMap<String, HashMap<String, u32>>,
    /// `(zone, instance type)` → when its spot mark lapses. Only spot marks: any other
    /// node scores as on-demand, ranked type or not.
    unavailable: HashMap<(String, String), Timestamp>,
    present: bool,
}

impl RankIndex {
    pub fn of(ranking: Option<&Ranking>) -> RankIndex {
        let Some(ranking) = ranking else {
            return RankIndex::default();
        };
        let mut unavailable = HashMap::new();
        for u in &ranking.unavailable {
            if u.capacity_type == CapacityType::Spot.as_str() {
                let until = unavailable
                    .entry((u.zone.clone(), u.instance_type.clone()))
                    .or_insert(u.expires);
                *until = (*until).max(u.expires);
            }
        }
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
            unavailable,
        }
    }

    pub fn is_present(&self) -> bool {
        self.present
    }

    /// Where a node stands at `now`, and, when an unavailable mark makes it unranked,
    /// the rank it gets back when the mark lapses. See [`ranking::score`] for what each
    /// standing scores.
    fn standing_and_lapse(
        &self,
        facts: &NodeFacts,
        now: Timestamp,
    ) -> (Standing, Option<(Timestamp, u32)>) {
        if facts.interruption != Interruption::None {
            return (Standing::Rebalancing, None);
        }
        if !self.present {
            return (Standing::NoRanking, None);
        }
        if facts.capacity != CapacityType::Spot {
            return (Standing::OnDemand, None);
        }
        let (Some(zone), Some(instance_type)) = (&facts.zone, &facts.instance_type) else {
            return (Standing::UnrankedSpot, None);
        };
        let Some(&rank) = self
            .ranks
            .get(zone.as_str())
            .and_then(|by_type| by_type.get(instance_type.as_str()))
        else {
            return (Standing::UnrankedSpot, None);
        };
        let lapse = if self.unavailable.is_empty() {
            None
        } else {
            self.unavailable
                .get(&(zone.clone(), instance_type.clone()))
                .filter(|&&until| until > now)
        };
        match lapse {
            // A type that just failed to launch or is being reclaimed scores as if
            // unranked: new pods should not pile onto it.
            Some(&until) => (Standing::UnrankedSpot, Some((until, rank))),
            None => (Standing::Ranked { rank }, None),
        }
    }

    /// Where a node stands at `now`.
    pub fn standing_at(&self, facts: &NodeFacts, now: Timestamp) -> Standing {
        self.standing_and_lapse(facts, now).0
    }

    /// Where a node stands now.
    pub fn standing(&self, facts: &NodeFacts) -> Standing {
        self.standing_at(facts, Timestamp::now())
    }

    /// The score at `now`, and when an unavailable mark lapses, the score from then on.
    pub fn scored(&self, facts: &NodeFacts, now: Timestamp) -> (i64, Option<(Timestamp, i64)>) {
        let (standing, lapse) = self.standing_and_lapse(facts, now);
        (
            ranking::score(standing),
            lapse.map(|(at, rank)| (at, ranking::score(Standing::Ranked { rank }))),
        )
    }

    pub fn score_at(&self, facts: &NodeFacts, now: Timestamp) -> i64 {
        ranking::score(self.standing_at(facts, now))
    }

    pub fn score(&self, facts: &NodeFacts) -> i64 {
        self.score_at(facts, Timestamp::now())
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
        let cached = CachedNode::new(facts, &inner.index, Timestamp::now());
        inner.nodes.insert(name, cached);
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
        let now = Timestamp::now();
        let map = nodes
            .into_iter()
            .map(|(name, facts)| (name, CachedNode::new(facts, index, now)))
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
        let now = Timestamp::now();
        for node in inner.nodes.values_mut() {
            (node.score, node.lapse) = index.scored(&node.facts, now);
        }
        inner.index = index;
        inner.ranking = ranking.map(Arc::new);
    }

    pub fn ranking(&self) -> Option<Arc<Ranking>> {
        self.view().inner.ranking.clone()
    }
}

#[cfg(test)]
mod tests {
    use spotkube_shared::ranking::{RankedType, SCHEMA_VERSION, Unavailable};

    use super::*;

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    fn entry(rank: u32, instance_type: &str) -> RankedType {
        RankedType {
            rank,
            instance_type: instance_type.into(),
            spot_usd_per_hour: 0.03,
            on_demand_usd_per_hour: 0.08,
            savings_percent: 62.5,
            vcpu: 2,
            memory_gib: 8.0,
            interruption_band: Some(1),
            score: 0.015,
        }
    }

    /// m7g.large ranks 1 and c7g.large 2 in both zones; `marks` are
    /// `(type, zone, capacity type, expires)`.
    fn ranking(marks: &[(&str, &str, &str, &str)]) -> Ranking {
        let entries = vec![entry(1, "m7g.large"), entry(2, "c7g.large")];
        Ranking {
            schema_version: SCHEMA_VERSION.into(),
            computed_at: at("2026-12-01T18:00:00Z"),
            source: "test".into(),
            region: Some("us-east-1".into()),
            criteria: None,
            zones: BTreeMap::from([
                ("us-east-1a".to_string(), entries.clone()),
                ("us-east-1b".to_string(), entries),
            ]),
            unavailable: marks
                .iter()
                .map(|(instance_type, zone, capacity, expires)| Unavailable {
                    instance_type: instance_type.to_string(),
                    zone: zone.to_string(),
                    capacity_type: capacity.to_string(),
                    reason: "capacity-error".into(),
                    expires: at(expires),
                })
                .collect(),
        }
    }

    fn facts(capacity: CapacityType, zone: &str, instance_type: &str) -> NodeFacts {
        NodeFacts {
            capacity,
            zone: Some(zone.into()),
            instance_type: Some(instance_type.into()),
            interruption: Interruption::None,
        }
    }

    const MARK: (&str, &str, &str, &str) =
        ("m7g.large", "us-east-1a", "spot", "2026-12-01T19:00:00Z");
    const BEFORE: &str = "2026-12-01T18:59:59Z";

    #[test]
    fn a_marked_spot_offering_scores_as_an_unranked_type() {
        let index = RankIndex::of(Some(&ranking(&[MARK])));
        let marked = facts(CapacityType::Spot, "us-east-1a", "m7g.large");
        let unranked = facts(CapacityType::Spot, "us-east-1a", "x8g.large");
        assert_eq!(
            index.standing_at(&marked, at(BEFORE)),
            Standing::UnrankedSpot
        );
        assert_eq!(
            index.score_at(&marked, at(BEFORE)),
            index.score_at(&unranked, at(BEFORE))
        );
        assert_eq!(index.score_at(&marked, at(BEFORE)), 2);
        // The other ranked type of the zone keeps its rank.
        let other = facts(CapacityType::Spot, "us-east-1a", "c7g.large");
        assert_eq!(index.score_at(&other, at(BEFORE)), 9);
    }

    #[test]
    fn the_same_type_on_demand_or_in_another_zone_scores_as_before() {
        let marked = RankIndex::of(Some(&ranking(&[MARK])));
        let unmarked = RankIndex::of(Some(&ranking(&[])));
        for node in [
            facts(CapacityType::OnDemand, "us-east-1a", "m7g.large"),
            facts(CapacityType::Spot, "us-east-1b", "m7g.large"),
        ] {
            assert_eq!(
                marked.standing_at(&node, at(BEFORE)),
                unmarked.standing_at(&node, at(BEFORE)),
                "{node:?}"
            );
        }
        assert_eq!(
            marked.standing_at(
                &facts(CapacityType::Spot, "us-east-1b", "m7g.large"),
                at(BEFORE)
            ),
            Standing::Ranked { rank: 1 }
        );
        // An on-demand mark does not touch the spot node of that offering.
        let on_demand_mark = RankIndex::of(Some(&ranking(&[(
            "m7g.large",
            "us-east-1a",
            "on-demand",
            "2026-12-01T19:00:00Z",
        )])));
        assert_eq!(
            on_demand_mark.standing_at(
                &facts(CapacityType::Spot, "us-east-1a", "m7g.large"),
                at(BEFORE)
            ),
            Standing::Ranked { rank: 1 }
        );
    }

    #[test]
    fn an_expired_mark_leaves_the_rank() {
        let index = RankIndex::of(Some(&ranking(&[MARK])));
        let node = facts(CapacityType::Spot, "us-east-1a", "m7g.large");
        assert_eq!(
            index.standing_at(&node, at("2026-12-01T19:00:00Z")),
            Standing::Ranked { rank: 1 }
        );
        assert_eq!(index.score_at(&node, at("2026-12-01T19:30:00Z")), 10);
    }

    fn spot_node(name: &str, zone: &str, instance_type: &str) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.labels = Some(BTreeMap::from([
            ("karpenter.sh/capacity-type".to_string(), "spot".to_string()),
            ("topology.kubernetes.io/zone".into(), zone.into()),
            (
                "node.kubernetes.io/instance-type".into(),
                instance_type.into(),
            ),
        ]));
        node
    }

    #[test]
    fn a_cached_node_gets_its_rank_back_when_the_mark_lapses() {
        let cluster = Cluster::new(None);
        cluster.apply_node(&spot_node("a", "us-east-1a", "m7g.large"));
        cluster.apply_node(&spot_node("b", "us-east-1b", "m7g.large"));
        let now = Timestamp::now();
        let expires = now
            .checked_add(jiff::SignedDuration::from_secs(60))
            .unwrap();
        let mut marked = ranking(&[]);
        marked.unavailable = ranking(&[MARK]).unavailable;
        marked.unavailable[0].expires = expires;
        // Installed after the nodes: the ranking rescores them.
        cluster.set_ranking(Some(marked.clone()));
        let score = |name: &str, at: Timestamp| cluster.view().node(name).unwrap().score_at(at);
        assert_eq!(score("a", now), 2);
        assert_eq!(score("b", now), 10);
        assert_eq!(score("a", expires), 10, "no event needed for the lapse");
        // A node applied under the ranking is scored the same way.
        cluster.apply_node(&spot_node("c", "us-east-1a", "m7g.large"));
        assert_eq!((score("c", now), score("c", expires)), (2, 10));
        // A mark already expired when the ranking arrives is ignored.
        marked.unavailable[0].expires = at("2020-01-01T00:00:00Z");
        cluster.set_ranking(Some(marked));
        assert_eq!(score("a", now), 10);
        assert!(cluster.view().node("a").unwrap().lapse.is_none());
    }
}
