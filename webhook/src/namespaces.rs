//! The Namespace cache: the webhook reads a namespace's opt-in and policy defaults
//! from a watch-backed reflector store, never with a GET per admission request.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use spotkube_shared::admin::Gate;

/// A read handle on the namespaces the webhook knows. Cloning shares the cache.
#[derive(Clone)]
pub struct NamespaceCache {
    store: Store<Namespace>,
}

impl NamespaceCache {
    /// A cache holding exactly `namespaces`, already synced (for tests and tools).
    pub fn fixed(namespaces: impl IntoIterator<Item = Namespace>) -> NamespaceCache {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for ns in namespaces {
            writer.apply_watcher_event(&watcher::Event::InitApply(ns));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        NamespaceCache { store }
    }

    /// A cache fed by a watch on all Namespaces, and the future that runs the watch
    /// (spawn it; it never ends). `synced` opens once the initial list is in.
    pub fn watch(
        client: Client,
        synced: Gate,
    ) -> (NamespaceCache, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        let api = Api::<Namespace>::all(client);
        let ready_store = store.clone();
        let run = async move {
            let wait_ready = async move {
                if ready_store.wait_until_ready().await.is_ok() {
                    synced.open();
                    tracing::info!("namespace cache synced");
                }
            };
            let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .for_each(|event| async move {
                    if let Err(e) = event {
                        // The watcher retries with backoff; the store keeps its last view.
                        tracing::warn!(error = %e, "namespace watch error");
                    }
                });
            futures::join!(wait_ready, stream);
        };
        (NamespaceCache { store }, run)
    }

    /// The cached namespace, `None` when it is unknown.
    pub fn get(&self, name: &str) -> Option<Arc<Namespace>> {
        self.store.get(&ObjectRef::new(name))
    }

    /// The annotation map of a cached namespace (empty when it has none).
    pub fn with_annotations<R>(
        &self,
        name: &str,
        f: impl FnOnce(Option<&BTreeMap<String, String>>) -> R,
    ) -> R {
        let ns = self.get(name);
        f(ns.as_deref().and_then(|n| n.metadata.annotations.as_ref()))
    }

    /// How many namespaces the cache holds.
    pub fn len(&self) -> usize {
        self.store.state().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    #[test]
    fn fixed_cache_answers_by_name() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                annotations: Some(BTreeMap::from([(
                    "spotkube.io/enabled".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        let plain = Namespace {
            metadata: ObjectMeta {
                name: Some("plain".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let cache = NamespaceCache::fixed([ns, plain]);
        let enabled = cache.with_annotations("demo", |a| {
            a.and_then(|a| a.get("spotkube.io/enabled")).cloned()
        });
        assert_eq!(enabled.as_deref(), Some("true"));
        assert!(cache.with_annotations("plain", |a| a.is_none()));
        assert!(cache.get("other").is_none());
        assert_eq!(cache.len(), 2);
    }
}
