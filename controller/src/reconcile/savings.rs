//! The savings loop: every interval, the leader computes what opted-in workloads cost
//! and would cost on on-demand ([`crate::savings`]) and exports it as metrics
//! ([`crate::metrics::SavingsMetrics`]).
//!
//! Everything comes from watch caches it keeps while leading: Nodes, bound pods that
//! still run, and Namespaces' opt-in annotation; prices come from the ranking
//! refresh's price book in memory. A pass makes no API call; the only AWS call is for
//! spot prices of node types the ranking did not price, once per ranking refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::runtime::watcher;
use spotkube_shared::admin::{Gate, Readiness};
use spotkube_shared::watch::{self, WatchIndex};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::savings::compute::{NodeFacts, PodFacts, Report, compute};
use crate::savings::inputs::{enabled, node_facts, opted_in, pod_enabled, pod_facts};
use crate::savings::prices::PriceFeed;

/// The default `--savings-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub every: Duration,
    /// Workloads with a series of their own; the rest are summed into `(other)`.
    pub max_workloads: usize,
}

/// Pods bound to a node and not finished: the API server filters.
pub const POD_FIELD_SELECTOR: &str = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed";

/// A watch-fed map from a key of each object to what is kept of it.
struct Keyed<K, V> {
    map: Arc<Mutex<HashMap<String, V>>>,
    read: fn(&K) -> Option<(String, V)>,
    key: fn(&K) -> Option<String>,
}

impl<K, V> Clone for Keyed<K, V> {
    fn clone(&self) -> Self {
        Keyed {
            map: self.map.clone(),
            read: self.read,
            key: self.key,
        }
    }
}

impl<K, V: Clone> Keyed<K, V> {
    fn new(read: fn(&K) -> Option<(String, V)>, key: fn(&K) -> Option<String>) -> Self {
        Keyed {
            map: Arc::default(),
            read,
            key,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, V>> {
        self.map.lock().expect("savings cache lock")
    }

    fn values(&self) -> Vec<V> {
        self.lock().values().cloned().collect()
    }
}

impl<K, V: Send> WatchIndex<K> for Keyed<K, V> {
    type Entry = (String, V);

    fn entry(&self, object: &K) -> Option<(String, V)> {
        (self.read)(object)
    }

    fn reset(&self, entries: Vec<(String, V)>) {
        *self.map.lock().expect("savings cache lock") = entries.into_iter().collect();
    }

    fn apply(&self, object: &K) {
        let mut map = self.map.lock().expect("savings cache lock");
        match (self.read)(object) {
            Some((key, value)) => {
                map.insert(key, value);
            }
            None => {
                if let Some(key) = (self.key)(object) {
                    map.remove(&key);
                }
            }
        }
    }

    fn delete(&self, object: &K) {
        if let Some(key) = (self.key)(object) {
            self.map.lock().expect("savings cache lock").remove(&key);
        }
    }
}

/// What the loop reads each pass.
#[derive(Clone)]
struct Caches {
    nodes: Keyed<Node, NodeFacts>,
    /// By pod uid: the pod's facts and its own `spotkube.io/enabled`.
    pods: Keyed<Pod, (PodFacts, Option<bool>)>,
    /// Namespace → opted in.
    namespaces: Keyed<Namespace, bool>,
}

impl Caches {
    fn new() -> Caches {
        Caches {
            nodes: Keyed::new(
                |n: &Node| Some((n.metadata.name.clone()?, node_facts(n))),
                |n| n.metadata.name.clone(),
            ),
            pods: Keyed::new(
                |p: &Pod| Some((p.metadata.uid.clone()?, (pod_facts(p)?, pod_enabled(p)))),
                |p| p.metadata.uid.clone(),
            ),
            namespaces: Keyed::new(
                |n: &Namespace| {
                    let on = enabled(n.metadata.annotations.as_ref()) == Some(true);
                    Some((n.metadata.name.clone()?, on))
                },
                |n| n.metadata.name.clone(),
            ),
        }
    }

    /// The nodes and the opted-in pods, as of now.
    fn read(&self) -> (Vec<NodeFacts>, Vec<PodFacts>) {
        let namespaces = self.namespaces.lock().clone();
        let pods = self
            .pods
            .values()
            .into_iter()
            .filter(|(pod, own)| {
                let namespace = namespaces.get(&pod.workload.namespace).copied();
                opted_in(namespace.unwrap_or(false), *own)
            })
            .map(|(pod, _)| pod)
            .collect();
        (self.nodes.values(), pods)
    }
}

/// Watches Nodes, pods and Namespaces into `caches` until the returned future is
/// dropped (the driver retries watch errors with backoff: it never ends on its own).
async fn watch_all(ctx: &Context, caches: &Caches, synced: [&Gate; 3]) {
    let client = &ctx.client;
    tokio::join!(
        watch::watch(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            &caches.nodes,
            synced[0],
            "savings nodes",
        ),
        watch::watch(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(POD_FIELD_SELECTOR),
            &caches.pods,
            synced[1],
            "savings pods",
        ),
        watch::watch(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            &caches.namespaces,
            synced[2],
            "savings namespaces",
        ),
    );
}

/// Computes and exports the savings every `settings.every` until `stop`.
pub async fn run(ctx: Context, settings: Settings, mut prices: PriceFeed, stop: CancellationToken) {
    let caches = Caches::new();
    let readiness = Readiness::default();
    let gates = [
        readiness.gate("savings nodes"),
        readiness.gate("savings pods"),
        readiness.gate("savings namespaces"),
    ];
    let watches = watch_all(&ctx, &caches, [&gates[0], &gates[1], &gates[2]]);
    let mut watches = std::pin::pin!(watches);
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = &mut watches => break,
            // Until every cache is synced, look again soon: the first figures should
            // not wait a whole interval.
            _ = tick.tick(), if synced => {
                let report = pass(&caches, &mut prices).await;
                ctx.metrics.savings.publish(&report, settings.max_workloads, jiff::Timestamp::now());
                tracing::debug!(
                    workloads = report.totals.workloads,
                    pods = report.totals.pods,
                    unpriced = report.totals.pods_unpriced,
                    usd_per_hour = report.totals.total_usd_per_hour,
                    "savings computed"
                );
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if !synced => {
                synced = gates.iter().all(Gate::is_open);
                if synced {
                    tick.reset_immediately();
                }
            }
        }
    }
    // A former leader no longer knows: leave the figures to the new one.
    ctx.metrics.savings.clear();
}

/// One computation from the caches.
async fn pass(caches: &Caches, prices: &mut PriceFeed) -> Report {
    let (nodes, pods) = caches.read();
    let table = prices.table(&nodes).await;
    compute(&nodes, &pods, &table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;
    use std::collections::BTreeMap;

    fn feed<K>(index: &impl WatchIndex<K>, events: Vec<Event<K>>) {
        let gate = Readiness::default().gate("test");
        let events = futures::stream::iter(events.into_iter().map(Ok));
        futures::executor::block_on(watch::drive(events, index, &gate, "test"));
    }

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

    fn pod(ns: &str, uid: &str, node: Option<&str>, opt_out: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "namespace": ns, "uid": uid},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
        }))
        .unwrap();
        pod.spec.as_mut().unwrap().node_name = node.map(Into::into);
        if opt_out {
            pod.metadata.annotations = Some(BTreeMap::from([(
                "spotkube.io/enabled".into(),
                "false".into(),
            )]));
        }
        pod
    }

    #[test]
    fn only_opted_in_bound_pods_are_read_and_changes_apply() {
        let caches = Caches::new();
        feed(
            &caches.namespaces,
            vec![
                Event::Apply(namespace("in", Some("true"))),
                Event::Apply(namespace("out", None)),
                Event::Apply(namespace("bad", Some("yes"))),
            ],
        );
        feed(
            &caches.pods,
            vec![
                Event::Apply(pod("in", "a", Some("n1"), false)),
                Event::Apply(pod("in", "opted-out", Some("n1"), true)),
                Event::Apply(pod("in", "unbound", None, false)),
                Event::Apply(pod("out", "b", Some("n1"), false)),
                Event::Apply(pod("bad", "c", Some("n1"), false)),
                Event::Apply(pod("gone-ns", "d", Some("n1"), false)),
            ],
        );
        let uids = |caches: &Caches| {
            let mut names: Vec<String> = caches
                .read()
                .1
                .into_iter()
                .map(|p| p.workload.name)
                .collect();
            names.sort();
            names
        };
        assert_eq!(uids(&caches), ["a"]);
        // The namespace opts in later: its pods count from then on.
        feed(
            &caches.namespaces,
            vec![Event::Apply(namespace("out", Some("true")))],
        );
        assert_eq!(uids(&caches), ["a", "b"]);
        // A pod unbound again (or deleted) is forgotten.
        feed(
            &caches.pods,
            vec![
                Event::Apply(pod("in", "a", None, false)),
                Event::Delete(pod("out", "b", Some("n1"), false)),
            ],
        );
        assert!(uids(&caches).is_empty());
    }
}
