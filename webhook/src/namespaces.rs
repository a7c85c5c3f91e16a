//! The Namespace cache: the webhook reads a namespace's opt-in and policy defaults
//! from a watch-backed index, never with a GET per admission request. Admission only
//! reads annotations, so that is all the index keeps of a Namespace (a reflector
//! store would keep whole objects, managed fields included).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::watcher;
use kube::{Api, Client};
use spotkube_shared::admin::Gate;
use spotkube_shared::watch::{self, WatchIndex};

type Annotations = BTreeMap<String, String>;

/// A read handle on the namespaces the webhook knows: name → annotations (`None` when
/// the namespace has none). Cloning shares the cache.
#[derive(Clone, Default)]
pub struct NamespaceCache {
    inner: Arc<RwLock<HashMap<String, Option<Annotations>>>>,
}

impl NamespaceCache {
    /// A cache holding exactly `namespaces`, already synced (for tests and tools).
    pub fn fixed(namespaces: impl IntoIterator<Item = Namespace>) -> NamespaceCache {
        let cache = NamespaceCache::default();
        let entries = namespaces
            .into_iter()
            .filter_map(|ns| cache.entry(&ns))
            .collect();
        cache.reset(entries);
        cache
    }

    /// A cache fed by a watch on all Namespaces, and the future that runs the watch
    /// (spawn it; it never ends). `synced` opens once the initial list is in.
    pub fn watch(
        client: Client,
        synced: Gate,
    ) -> (NamespaceCache, impl Future<Output = ()> + Send + 'static) {
        let cache = NamespaceCache::default();
        let index = cache.clone();
        let run = async move {
            let api = Api::<Namespace>::all(client);
            watch::watch(
                api,
                watcher::Config::default(),
                &index,
                &synced,
                "namespaces",
            )
            .await;
        };
        (cache, run)
    }

    /// Whether the cache knows namespace `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// The annotation map of a cached namespace (`None` when it is unknown or has none).
    /// A closure rather than a clone: this runs on every admission request.
    pub fn with_annotations<R>(&self, name: &str, f: impl FnOnce(Option<&Annotations>) -> R) -> R {
        let map = self.read();
        f(map.get(name).and_then(Option::as_ref))
    }

    /// How many namespaces the cache holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Option<Annotations>>> {
        self.inner.read().expect("namespace cache lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Option<Annotations>>> {
        self.inner.write().expect("namespace cache lock")
    }
}

impl WatchIndex<Namespace> for NamespaceCache {
    type Entry = (String, Option<Annotations>);

    fn entry(&self, ns: &Namespace) -> Option<Self::Entry> {
        Some((ns.metadata.name.clone()?, ns.metadata.annotations.clone()))
    }

    fn reset(&self, entries: Vec<Self::Entry>) {
        *self.write() = entries.into_iter().collect();
    }

    fn apply(&self, ns: &Namespace) {
        if let Some((name, annotations)) = self.entry(ns) {
            self.write().insert(name, annotations);
        }
    }

    fn delete(&self, ns: &Namespace) {
        if let Some(name) = ns.metadata.name.as_deref() {
            self.write().remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;
    use spotkube_shared::admin::Readiness;

    fn namespace(name: &str, annotations: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: (!annotations.is_empty()).then(|| {
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn enabled(cache: &NamespaceCache, name: &str) -> Option<String> {
        cache.with_annotations(name, |a| {
            a.and_then(|a| a.get("spotkube.io/enabled")).cloned()
        })
    }

    async fn feed(cache: &NamespaceCache, gate: &Gate, events: Vec<Event<Namespace>>) {
        let events = futures::stream::iter(events.into_iter().map(Ok));
        watch::drive(events, cache, gate, "test").await;
    }

    #[test]
    fn fixed_cache_answers_by_name() {
        let ns = namespace("demo", &[("spotkube.io/enabled", "true")]);
        let plain = namespace("plain", &[]);
        let cache = NamespaceCache::fixed([ns, plain]);
        assert_eq!(enabled(&cache, "demo").as_deref(), Some("true"));
        assert!(cache.with_annotations("plain", |a| a.is_none()));
        assert!(!cache.contains("other"));
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn a_relist_replaces_everything_once_done() {
        let cache = NamespaceCache::fixed([namespace("old", &[("spotkube.io/enabled", "true")])]);
        let gate = Readiness::default().gate("test");
        let new = namespace("new", &[("spotkube.io/enabled", "true")]);
        feed(
            &cache,
            &gate,
            vec![Event::Init, Event::InitApply(new.clone())],
        )
        .await;
        // Mid-relist the previous view still answers, and the cache is not synced yet.
        assert!(cache.contains("old") && !cache.contains("new"));
        assert!(!gate.is_open());
        feed(
            &cache,
            &gate,
            vec![
                Event::Init,
                Event::InitApply(new),
                Event::InitApply(namespace("plain", &[])),
                Event::InitDone,
            ],
        )
        .await;
        assert!(gate.is_open());
        assert!(!cache.contains("old"));
        assert_eq!(enabled(&cache, "new").as_deref(), Some("true"));
        assert!(cache.contains("plain"));
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn applies_and_deletes() {
        let cache = NamespaceCache::default();
        let gate = Readiness::default().gate("test");
        feed(
            &cache,
            &gate,
            vec![
                Event::Init,
                Event::InitDone,
                Event::Apply(namespace("demo", &[("spotkube.io/enabled", "true")])),
                Event::Apply(namespace("other", &[])),
            ],
        )
        .await;
        assert_eq!(enabled(&cache, "demo").as_deref(), Some("true"));
        feed(
            &cache,
            &gate,
            vec![
                // The annotation was removed: the change replaces the old entry.
                Event::Apply(namespace("demo", &[])),
                Event::Delete(namespace("other", &[])),
            ],
        )
        .await;
        assert_eq!(enabled(&cache, "demo"), None);
        assert!(cache.contains("demo"));
        assert!(!cache.contains("other"));
        assert_eq!(cache.len(), 1);
    }
}
