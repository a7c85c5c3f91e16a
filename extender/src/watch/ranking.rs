//! The ranking ConfigMap watch. A missing ConfigMap means no ranking (neutral scores);
//! an unreadable one keeps the last good ranking and counts an error.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;
use kube::{Api, Client};
use spotkube_shared::admin::Gate;
use spotkube_shared::ranking::{CONFIGMAP_KEY, Ranking, RankingError};
use spotkube_shared::watch::{WatchIndex, watch};
use tracing::Instrument;

use crate::cache::Cluster;
use crate::metrics::Metrics;

/// Reads the ranking out of a ConfigMap. `Ok(None)`: the key is absent.
pub fn ranking_of(cm: &ConfigMap) -> Result<Option<Ranking>, RankingError> {
    let data: Option<&BTreeMap<String, String>> = cm.data.as_ref();
    match data.and_then(|d| d.get(CONFIGMAP_KEY)) {
        None => Ok(None),
        Some(text) => Ranking::from_json(text).map(Some),
    }
}

/// The ranking ConfigMap → [`Cluster`], keeping `ranking_loaded` and `ranking_errors`
/// current. The watch selects the one ConfigMap by name.
pub struct RankingIndex {
    cluster: Cluster,
    metrics: Metrics,
}

impl RankingIndex {
    pub fn new(cluster: Cluster, metrics: Metrics) -> RankingIndex {
        RankingIndex { cluster, metrics }
    }

    fn install(&self, read: Result<Option<Ranking>, RankingError>) {
        match read {
            Ok(ranking) => {
                if let Some(r) = &ranking {
                    tracing::info!(source = %r.source, computed_at = %r.computed_at, zones = r.zones.len(), "ranking loaded");
                } else {
                    tracing::warn!("ranking ConfigMap has no {CONFIGMAP_KEY}; scoring neutrally");
                }
                let loaded = ranking.is_some();
                self.cluster.set_ranking(ranking);
                self.metrics.ranking_loaded.set(i64::from(loaded));
            }
            Err(error) => {
                self.metrics.ranking_errors.inc();
                tracing::error!(%error, "ranking ConfigMap unreadable; keeping the last good ranking");
            }
        }
    }

    fn clear(&self) {
        self.cluster.set_ranking(None);
        self.metrics.ranking_loaded.set(0);
    }
}

impl WatchIndex<ConfigMap> for RankingIndex {
    /// The ConfigMap read once, as it arrives: a relist buffers a ranking, not the text.
    type Entry = Result<Option<Ranking>, RankingError>;

    fn entry(&self, cm: &ConfigMap) -> Option<Self::Entry> {
        Some(ranking_of(cm))
    }

    fn reset(&self, entries: Vec<Self::Entry>) {
        // Selected by name, a list holds the ConfigMap or nothing.
        match entries.into_iter().next_back() {
            Some(read) => self.install(read),
            None => {
                tracing::warn!("no ranking ConfigMap; scoring neutrally");
                self.clear();
            }
        }
    }

    fn apply(&self, cm: &ConfigMap) {
        self.install(ranking_of(cm));
    }

    fn delete(&self, _: &ConfigMap) {
        tracing::warn!("ranking ConfigMap deleted; scoring neutrally");
        self.clear();
    }
}

/// Watches ConfigMap `namespace/name` into `cluster`, forever. Its lines carry the
/// ConfigMap once, on the watch's span.
pub async fn ranking(
    client: Client,
    namespace: String,
    name: String,
    cluster: Cluster,
    metrics: Metrics,
    ready: Gate,
) {
    let span =
        tracing::info_span!("ranking_watch", configmap = %format_args!("{namespace}/{name}"));
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let index = RankingIndex::new(cluster, metrics);
    watch(api, config, &index, &ready, "ranking")
        .instrument(span)
        .await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;
    use prometheus_client::registry::Registry;
    use spotkube_shared::admin::Readiness;
    use spotkube_shared::ranking::{RankedType, SCHEMA_VERSION};

    use super::*;
    use crate::watch::feed;

    fn ranking(source: &str) -> Ranking {
        let entry = RankedType {
            rank: 1,
            instance_type: "m7g.large".into(),
            spot_usd_per_hour: 0.03,
            on_demand_usd_per_hour: 0.08,
            savings_percent: 62.5,
            vcpu: 2,
            memory_gib: 8.0,
            interruption_band: Some(1),
            score: 0.015,
        };
        Ranking {
            schema_version: SCHEMA_VERSION.into(),
            computed_at: "2026-11-22T04:00:00Z".parse().unwrap(),
            source: source.into(),
            region: Some("us-east-1".into()),
            criteria: None,
            zones: BTreeMap::from([("us-east-1a".to_string(), vec![entry])]),
            unavailable: Vec::new(),
        }
    }

    fn configmap(text: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("spotkube-ranking".into()),
                namespace: Some("spotkube-system".into()),
                ..Default::default()
            },
            data: text.map(|t| BTreeMap::from([(CONFIGMAP_KEY.to_string(), t.to_string())])),
            ..Default::default()
        }
    }

    fn with_ranking(source: &str) -> ConfigMap {
        configmap(Some(&ranking(source).to_json()))
    }

    fn setup() -> (Cluster, Metrics, RankingIndex, Gate) {
        let metrics = Metrics::register(&mut Registry::default());
        let cluster = Cluster::new(None);
        let index = RankingIndex::new(cluster.clone(), metrics.clone());
        (cluster, metrics, index, Readiness::default().gate("test"))
    }

    fn source(cluster: &Cluster) -> Option<String> {
        cluster.ranking().map(|r: Arc<Ranking>| r.source.clone())
    }

    /// A complete list holding one ranking ConfigMap whose source is `name`.
    async fn listed(index: &RankingIndex, gate: &Gate, name: &str) {
        feed(
            index,
            gate,
            vec![
                Event::Init,
                Event::InitApply(with_ranking(name)),
                Event::InitDone,
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn a_listed_ranking_is_installed_at_init_done() {
        let (cluster, metrics, index, gate) = setup();
        feed(
            &index,
            &gate,
            vec![Event::Init, Event::InitApply(with_ranking("listed"))],
        )
        .await;
        assert_eq!(
            source(&cluster),
            None,
            "installed only once the list is complete"
        );
        assert!(!gate.is_open());
        feed(
            &index,
            &gate,
            vec![
                Event::Init,
                Event::InitApply(with_ranking("listed")),
                Event::InitDone,
            ],
        )
        .await;
        assert!(gate.is_open());
        assert_eq!(source(&cluster).as_deref(), Some("listed"));
        assert!(cluster.view().index().is_present());
        assert_eq!(metrics.ranking_loaded.get(), 1);
    }

    #[tokio::test]
    async fn a_missing_configmap_after_a_list_means_neutral_scores() {
        let (cluster, metrics, index, gate) = setup();
        cluster.set_ranking(Some(ranking("before")));
        metrics.ranking_loaded.set(1);
        feed(&index, &gate, vec![Event::Init, Event::InitDone]).await;
        assert!(gate.is_open(), "no ConfigMap is still a complete list");
        assert_eq!(source(&cluster), None);
        assert!(!cluster.view().index().is_present());
        assert_eq!(metrics.ranking_loaded.get(), 0);
    }

    #[tokio::test]
    async fn a_configmap_without_the_key_means_neutral_scores() {
        let (cluster, metrics, index, gate) = setup();
        listed(&index, &gate, "good").await;
        feed(&index, &gate, vec![Event::Apply(configmap(None))]).await;
        assert_eq!(source(&cluster), None);
        assert_eq!(metrics.ranking_loaded.get(), 0);
        assert_eq!(metrics.ranking_errors.get(), 0);
    }

    #[tokio::test]
    async fn an_unreadable_ranking_keeps_the_last_good_one_and_counts_an_error() {
        let (cluster, metrics, index, gate) = setup();
        listed(&index, &gate, "good").await;
        let future_major = ranking("future")
            .to_json()
            .replace(&format!("\"{SCHEMA_VERSION}\""), "\"99.0\"");
        feed(
            &index,
            &gate,
            vec![
                Event::Apply(configmap(Some("not json"))),
                Event::Apply(configmap(Some(&future_major))),
            ],
        )
        .await;
        assert_eq!(source(&cluster).as_deref(), Some("good"));
        assert_eq!(metrics.ranking_loaded.get(), 1);
        assert_eq!(metrics.ranking_errors.get(), 2);

        // Also in a relist: the error is counted and the good ranking stays.
        feed(
            &index,
            &gate,
            vec![
                Event::Init,
                Event::InitApply(configmap(Some("{"))),
                Event::InitDone,
            ],
        )
        .await;
        assert_eq!(source(&cluster).as_deref(), Some("good"));
        assert_eq!(metrics.ranking_errors.get(), 3);

        // A readable update replaces it.
        feed(&index, &gate, vec![Event::Apply(with_ranking("fixed"))]).await;
        assert_eq!(source(&cluster).as_deref(), Some("fixed"));
    }

    #[tokio::test]
    async fn a_deleted_configmap_means_neutral_scores() {
        let (cluster, metrics, index, gate) = setup();
        listed(&index, &gate, "good").await;
        feed(&index, &gate, vec![Event::Delete(with_ranking("good"))]).await;
        assert_eq!(source(&cluster), None);
        assert!(!cluster.view().index().is_present());
        assert_eq!(metrics.ranking_loaded.get(), 0);
        assert!(gate.is_open());
    }
}
