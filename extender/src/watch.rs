//! Watches that keep the [`Cluster`] view current: Nodes, Namespaces (policy
//! annotations) and the ranking ConfigMap. Each runs until the process stops, with
//! kube-runtime's default backoff on errors, and opens its readiness gate after the
//! first complete list.

use std::collections::{BTreeMap, HashMap};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use spotkube_shared::admin::Gate;
use spotkube_shared::ranking::{CONFIGMAP_KEY, Ranking};

use crate::cache::Cluster;
use crate::metrics::Metrics;

pub async fn nodes(client: Client, cluster: Cluster, metrics: Metrics, ready: Gate) {
    let api: Api<Node> = Api::all(client);
    let mut buffer: Vec<Node> = Vec::new();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => match event {
                Event::Init => buffer.clear(),
                Event::InitApply(node) => buffer.push(node),
                Event::InitDone => {
                    cluster.replace_nodes(&buffer);
                    buffer = Vec::new();
                    ready.open();
                    tracing::info!(nodes = cluster.node_count(), "node cache synced");
                }
                Event::Apply(node) => cluster.apply_node(&node),
                Event::Delete(node) => {
                    if let Some(name) = node.metadata.name.as_deref() {
                        cluster.delete_node(name);
                    }
                }
            },
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "node watch failed; retrying"),
        }
        metrics.cached_nodes.set(cluster.node_count() as i64);
    }
}

pub async fn namespaces(client: Client, cluster: Cluster, ready: Gate) {
    let api: Api<Namespace> = Api::all(client);
    let mut buffer = HashMap::new();
    let annotations = |ns: &Namespace| ns.metadata.annotations.clone().unwrap_or_default();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => match event {
                Event::Init => buffer.clear(),
                Event::InitApply(ns) => {
                    if let Some(name) = ns.metadata.name.clone() {
                        buffer.insert(name, annotations(&ns));
                    }
                }
                Event::InitDone => {
                    cluster.replace_namespaces(std::mem::take(&mut buffer));
                    ready.open();
                }
                Event::Apply(ns) => {
                    if let Some(name) = ns.metadata.name.as_deref() {
                        cluster.set_namespace(name, annotations(&ns));
                    }
                }
                Event::Delete(ns) => {
                    if let Some(name) = ns.metadata.name.as_deref() {
                        cluster.delete_namespace(name);
                    }
                }
            },
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "namespace watch failed; retrying"),
        }
    }
}

/// Reads the ranking out of a ConfigMap. `Ok(None)`: the key is absent.
pub fn ranking_of(
    cm: &ConfigMap,
) -> Result<Option<Ranking>, spotkube_shared::ranking::RankingError> {
    let data: Option<&BTreeMap<String, String>> = cm.data.as_ref();
    match data.and_then(|d| d.get(CONFIGMAP_KEY)) {
        None => Ok(None),
        Some(text) => Ranking::from_json(text).map(Some),
    }
}

/// Watches the ranking ConfigMap. A missing ConfigMap means no ranking (neutral
/// scores); an unreadable one keeps the last good ranking and counts an error.
pub async fn ranking(
    client: Client,
    namespace: String,
    name: String,
    cluster: Cluster,
    metrics: Metrics,
    ready: Gate,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen_in_list = false;
    let apply = |cm: &ConfigMap| match ranking_of(cm) {
        Ok(ranking) => {
            let loaded = ranking.is_some();
            if let Some(r) = &ranking {
                tracing::info!(source = %r.source, computed_at = %r.computed_at, zones = r.zones.len(), "ranking loaded");
            } else {
                tracing::warn!(%namespace, %name, "ranking ConfigMap has no {CONFIGMAP_KEY}; scoring neutrally");
            }
            cluster.set_ranking(ranking);
            metrics.ranking_loaded.set(i64::from(loaded));
        }
        Err(e) => {
            metrics.ranking_errors.inc();
            tracing::error!(error = %e, %namespace, %name, "ranking ConfigMap unreadable; keeping the last good ranking");
        }
    };
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => match event {
                Event::Init => seen_in_list = false,
                Event::InitApply(cm) => {
                    seen_in_list = true;
                    apply(&cm);
                }
                Event::InitDone => {
                    if !seen_in_list {
                        tracing::warn!(%namespace, %name, "no ranking ConfigMap; scoring neutrally");
                        cluster.set_ranking(None);
                        metrics.ranking_loaded.set(0);
                    }
                    ready.open();
                }
                Event::Apply(cm) => apply(&cm),
                Event::Delete(_) => {
                    tracing::warn!(%namespace, %name, "ranking ConfigMap deleted; scoring neutrally");
                    cluster.set_ranking(None);
                    metrics.ranking_loaded.set(0);
                }
            },
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "ranking watch failed; retrying"),
        }
    }
}
