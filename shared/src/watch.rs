//! One watch → index driver for every cache the programs keep: the webhook's
//! Namespaces, the extender's Nodes, Namespaces and ranking, the controller's
//! providerID index.
//!
//! kube-runtime's reflector keeps whole objects; our indexes keep a few fields of each
//! (a Node's facts, a Namespace's annotations), so the driver buffers only what the
//! index keeps while a relist is in progress and swaps it in at `InitDone`. Until
//! then the index keeps answering from its previous view.

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

use crate::admin::Gate;

/// An index fed by a watch. Implementations use interior mutability: the driver holds
/// `&self` while readers query it concurrently.
pub trait WatchIndex<K>: Send + Sync {
    /// What the index keeps of one object: buffered during a relist.
    type Entry: Send;

    /// What to keep of `object`; `None` when the index keeps nothing of it.
    fn entry(&self, object: &K) -> Option<Self::Entry>;

    /// A complete relist is in: replace everything with `entries`.
    fn reset(&self, entries: Vec<Self::Entry>);

    /// `object` was created or changed (it may no longer belong: then forget it).
    fn apply(&self, object: &K);

    /// `object` was deleted.
    fn delete(&self, object: &K);
}

/// Applies watch events to `index` until the stream ends. `synced` opens at the first
/// `InitDone`; errors are logged and the watcher (with its backoff) retries.
pub async fn drive<K, I, S>(events: S, index: &I, synced: &Gate, what: &str)
where
    I: WatchIndex<K>,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut relist: Option<Vec<I::Entry>> = None;
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => relist = Some(Vec::new()),
            Ok(Event::InitApply(object)) => {
                if let Some(entry) = index.entry(&object) {
                    relist.get_or_insert_with(Vec::new).push(entry);
                }
            }
            Ok(Event::InitDone) => {
                index.reset(relist.take().unwrap_or_default());
                if !synced.is_open() {
                    tracing::info!(cache = what, "cache synced");
                }
                synced.open();
            }
            Ok(Event::Apply(object)) => index.apply(&object),
            Ok(Event::Delete(object)) => index.delete(&object),
            Err(error) => tracing::warn!(cache = what, %error, "watch error; retrying"),
        }
    }
}

/// Watches `api` with `config` (kube-runtime's default backoff) into `index`, forever.
pub async fn watch<K, I>(api: Api<K>, config: watcher::Config, index: &I, synced: &Gate, what: &str)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    I: WatchIndex<K>,
{
    let events = watcher::watcher(api, config).default_backoff();
    drive(events, index, synced, what).await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::admin::Readiness;

    /// Namespace name → its `team` annotation; namespaces without one are not kept.
    #[derive(Default)]
    struct Teams {
        map: Mutex<BTreeMap<String, String>>,
        resets: Mutex<usize>,
    }

    impl WatchIndex<Namespace> for Teams {
        type Entry = (String, String);
        fn entry(&self, ns: &Namespace) -> Option<(String, String)> {
            let team = ns.metadata.annotations.as_ref()?.get("team")?;
            Some((ns.metadata.name.clone()?, team.clone()))
        }
        fn reset(&self, entries: Vec<(String, String)>) {
            *self.map.lock().unwrap() = entries.into_iter().collect();
            *self.resets.lock().unwrap() += 1;
        }
        fn apply(&self, ns: &Namespace) {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let mut map = self.map.lock().unwrap();
            match self.entry(ns) {
                Some((_, team)) => map.insert(name, team),
                None => map.remove(&name),
            };
        }
        fn delete(&self, ns: &Namespace) {
            let name = ns.metadata.name.as_deref().unwrap_or_default();
            self.map.lock().unwrap().remove(name);
        }
    }

    fn ns(name: &str, team: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: team.map(|t| BTreeMap::from([("team".into(), t.into())])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn teams(index: &Teams) -> Vec<(String, String)> {
        index
            .map
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    async fn feed(
        index: &Teams,
        gate: &Gate,
        events: Vec<Result<Event<Namespace>, watcher::Error>>,
    ) {
        drive(futures::stream::iter(events), index, gate, "test").await;
    }

    fn pair(name: &str, team: &str) -> (String, String) {
        (name.into(), team.into())
    }

    #[tokio::test]
    async fn relist_is_buffered_and_swapped_in_at_init_done() {
        let index = Teams::default();
        let gate = Readiness::default().gate("test");
        feed(&index, &gate, vec![Ok(Event::Apply(ns("old", Some("a"))))]).await;
        assert!(!gate.is_open(), "no InitDone yet");
        feed(
            &index,
            &gate,
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(ns("new", Some("b")))),
                Ok(Event::InitApply(ns("plain", None))),
            ],
        )
        .await;
        // Mid-relist: the previous view still answers, nothing was reset.
        assert_eq!(teams(&index), vec![pair("old", "a")]);
        assert_eq!(*index.resets.lock().unwrap(), 0);
        feed(
            &index,
            &gate,
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(ns("new", Some("b")))),
                Ok(Event::InitApply(ns("plain", None))),
                Ok(Event::InitDone),
            ],
        )
        .await;
        assert_eq!(teams(&index), vec![pair("new", "b")]);
        assert!(gate.is_open());
    }

    #[tokio::test]
    async fn applies_deletes_and_survives_watch_errors() {
        let index = Teams::default();
        let gate = Readiness::default().gate("test");
        feed(
            &index,
            &gate,
            vec![
                Ok(Event::Init),
                Ok(Event::InitDone),
                Ok(Event::Apply(ns("shop", Some("web")))),
                Err(watcher::Error::NoResourceVersion),
                Ok(Event::Apply(ns("pay", Some("core")))),
                Ok(Event::Apply(ns("shop", None))),
                Ok(Event::Delete(ns("missing", None))),
            ],
        )
        .await;
        assert!(gate.is_open());
        assert_eq!(teams(&index), vec![pair("pay", "core")]);
        feed(
            &index,
            &gate,
            vec![Ok(Event::Delete(ns("pay", Some("core"))))],
        )
        .await;
        assert!(teams(&index).is_empty());
    }

    #[tokio::test]
    async fn an_empty_relist_empties_the_index_and_opens_the_gate() {
        let index = Teams::default();
        let gate = Readiness::default().gate("test");
        feed(&index, &gate, vec![Ok(Event::Apply(ns("gone", Some("x"))))]).await;
        feed(&index, &gate, vec![Ok(Event::Init), Ok(Event::InitDone)]).await;
        assert!(teams(&index).is_empty());
        assert!(gate.is_open());
    }
}
