//! The Namespace watch: each namespace's annotations (its policy defaults).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::watcher;
use kube::{Api, Client};
use spotkube_shared::admin::Gate;
use spotkube_shared::watch::{WatchIndex, watch};

use crate::cache::Cluster;

/// Namespaces → [`Cluster`]: name → annotations (empty when it has none).
pub struct NamespaceIndex {
    cluster: Cluster,
}

impl NamespaceIndex {
    pub fn new(cluster: Cluster) -> NamespaceIndex {
        NamespaceIndex { cluster }
    }
}

impl WatchIndex<Namespace> for NamespaceIndex {
    type Entry = (String, BTreeMap<String, String>);

    fn entry(&self, ns: &Namespace) -> Option<Self::Entry> {
        let annotations = ns.metadata.annotations.clone().unwrap_or_default();
        Some((ns.metadata.name.clone()?, annotations))
    }

    fn reset(&self, entries: Vec<Self::Entry>) {
        self.cluster
            .replace_namespaces(entries.into_iter().collect());
    }

    fn apply(&self, ns: &Namespace) {
        if let Some((name, annotations)) = self.entry(ns) {
            self.cluster.set_namespace(&name, annotations);
        }
    }

    fn delete(&self, ns: &Namespace) {
        if let Some(name) = ns.metadata.name.as_deref() {
            self.cluster.delete_namespace(name);
        }
    }
}

/// Watches all Namespaces into `cluster`, forever.
pub async fn namespaces(client: Client, cluster: Cluster, ready: Gate) {
    let index = NamespaceIndex::new(cluster);
    watch(
        Api::all(client),
        watcher::Config::default(),
        &index,
        &ready,
        "namespaces",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;
    use spotkube_shared::admin::Readiness;

    use super::*;
    use crate::watch::feed;

    fn namespace(name: &str, enabled: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: enabled
                    .map(|v| BTreeMap::from([("spotkube.io/enabled".into(), v.into())])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// `None`: unknown namespace; `Some(None)`: known, not annotated.
    fn enabled(cluster: &Cluster, name: &str) -> Option<Option<String>> {
        let view = cluster.view();
        let annotations = view.namespace_annotations(name)?;
        Some(annotations.get("spotkube.io/enabled").cloned())
    }

    #[tokio::test]
    async fn a_relist_replaces_the_namespaces_once_done_and_opens_the_gate() {
        let cluster = Cluster::new(None);
        cluster.set_namespace("old", BTreeMap::new());
        let index = NamespaceIndex::new(cluster.clone());
        let gate = Readiness::default().gate("test");
        feed(
            &index,
            &gate,
            vec![
                Event::Init,
                Event::InitApply(namespace("demo", Some("true"))),
            ],
        )
        .await;
        assert_eq!(
            enabled(&cluster, "old"),
            Some(None),
            "mid-relist the old view answers"
        );
        assert_eq!(enabled(&cluster, "demo"), None);
        assert!(!gate.is_open());
        feed(
            &index,
            &gate,
            vec![
                Event::Init,
                Event::InitApply(namespace("demo", Some("true"))),
                Event::InitApply(namespace("plain", None)),
                Event::InitDone,
            ],
        )
        .await;
        assert!(gate.is_open());
        assert_eq!(enabled(&cluster, "old"), None);
        assert_eq!(enabled(&cluster, "demo"), Some(Some("true".into())));
        assert_eq!(enabled(&cluster, "plain"), Some(None));
    }

    #[tokio::test]
    async fn applies_and_deletes() {
        let cluster = Cluster::new(None);
        let index = NamespaceIndex::new(cluster.clone());
        let gate = Readiness::default().gate("test");
        feed(
            &index,
            &gate,
            vec![
                Event::Init,
                Event::InitDone,
                Event::Apply(namespace("demo", Some("true"))),
                Event::Apply(namespace("other", Some("true"))),
            ],
        )
        .await;
        assert_eq!(enabled(&cluster, "demo"), Some(Some("true".into())));
        feed(
            &index,
            &gate,
            vec![
                Event::Apply(namespace("demo", None)),
                Event::Delete(namespace("other", Some("true"))),
            ],
        )
        .await;
        assert_eq!(enabled(&cluster, "demo"), Some(None), "annotation removed");
        assert_eq!(enabled(&cluster, "other"), None, "namespace deleted");
    }
}
