//! Watches that keep the [`Cluster`](crate::cache::Cluster) view current: Nodes,
//! Namespaces (policy annotations) and the ranking ConfigMap. Each is a
//! [`WatchIndex`](spotkube_shared::watch::WatchIndex) over the cluster view driven by
//! [`spotkube_shared::watch`]: it runs until the process stops, with kube-runtime's
//! default backoff on errors, buffers only what it keeps during a relist, and opens its
//! readiness gate after the first complete list.

mod namespaces;
mod nodes;
mod ranking;

pub use namespaces::{NamespaceIndex, namespaces};
pub use nodes::{NodeIndex, nodes};
pub use ranking::{RankingIndex, ranking, ranking_of};

/// Feeds `events` to `index` through the real driver, without an API server.
#[cfg(test)]
async fn feed<K, I: spotkube_shared::watch::WatchIndex<K>>(
    index: &I,
    gate: &spotkube_shared::admin::Gate,
    events: Vec<kube::runtime::watcher::Event<K>>,
) {
    let events = futures::stream::iter(events.into_iter().map(Ok));
    spotkube_shared::watch::drive(events, index, gate, "test").await;
}
