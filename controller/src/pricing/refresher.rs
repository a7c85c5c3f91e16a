//! Refreshes the ranking on an interval and publishes it to ConfigMap
//! `spotkube-system/spotkube-ranking` (key `ranking.json`), with the offerings marked
//! unavailable, only when its content changed. A failed refresh leaves the published
//! ranking — the last good one — in place, counts the failure and logs it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use spotkube_shared::ranking::{
    CONFIGMAP_KEY, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE, Criteria, Ranking, Unavailable, compute,
};

use super::{LatestBook, PriceSource};
use crate::capacity::ice::Mark;
use crate::error::{Error, KubeResultExt, Result};

/// The default refresh interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10 * 60);
const FIELD_MANAGER: &str = "spotkube-controller";

#[derive(Clone, Default)]
pub struct RefreshMetrics {
    pub refreshes: Counter,
    pub failures: Counter,
    pub writes: Counter,
    pub last_success_seconds: Gauge,
}

impl RefreshMetrics {
    pub fn register(registry: &mut Registry) -> RefreshMetrics {
        let m = RefreshMetrics::default();
        let r = registry.sub_registry_with_prefix("spotkube_ranking");
        r.register(
            "refreshes",
            "Ranking refreshes attempted",
            m.refreshes.clone(),
        );
        r.register(
            "refresh_failures",
            "Ranking refreshes that failed (the last good ranking stays published)",
            m.failures.clone(),
        );
        r.register(
            "configmap_writes",
            "Ranking ConfigMap writes (only on change)",
            m.writes.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful refresh",
            m.last_success_seconds.clone(),
        );
        m
    }
}

/// What one refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    Written,
    Unchanged,
}

/// Where the ranking is published.
#[derive(Clone)]
pub struct Target {
    pub namespace: String,
    pub name: String,
}

impl Default for Target {
    fn default() -> Self {
        Target {
            namespace: CONFIGMAP_NAMESPACE.into(),
            name: CONFIGMAP_NAME.into(),
        }
    }
}

impl From<(String, String)> for Target {
    /// From `--ranking-configmap`'s `(namespace, name)`.
    fn from((namespace, name): (String, String)) -> Self {
        Target { namespace, name }
    }
}

/// The unavailable-offering marks as the ranking lists them.
pub fn unavailable_of(marks: &[Mark]) -> Vec<Unavailable> {
    marks
        .iter()
        .map(|m| Unavailable {
            instance_type: m.offering.instance_type.clone(),
            zone: m.offering.zone.clone(),
            capacity_type: m.offering.capacity.as_str().to_string(),
            reason: m.reason.as_str().to_string(),
            expires: m.expires,
        })
        .collect()
}

/// Computes a ranking and writes it, listing `unavailable`, when its content differs
/// from the published one. The prices and the ranking (without the marks) are kept in
/// `latest` first, whether or not the write succeeds: they are the savings loop's too,
/// and the ranking loop republishes them when the marks change.
pub async fn refresh_once(
    client: &Client,
    target: &Target,
    source: &impl PriceSource,
    criteria: &Criteria,
    latest: &LatestBook,
    unavailable: Vec<Unavailable>,
) -> Result<Refreshed> {
    let book = source.price_book(criteria).await?;
    let ranking = compute(&book, criteria, source.name(), jiff::Timestamp::now());
    latest.set(book, ranking.clone());
    publish(client, target, ranking, unavailable).await
}

/// Writes `ranking` listing `unavailable` when that differs from the published content
/// (an already computed ranking: no prices are fetched).
pub async fn publish(
    client: &Client,
    target: &Target,
    mut ranking: Ranking,
    unavailable: Vec<Unavailable>,
) -> Result<Refreshed> {
    ranking.unavailable = unavailable;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &target.namespace);
    let object = format!("configmap/{}/{}", target.namespace, target.name);
    let current = api
        .get_opt(&target.name)
        .await
        .kube("get", &object)?
        .and_then(|cm| cm.data?.remove(CONFIGMAP_KEY))
        .and_then(|text| Ranking::from_json(&text).ok());
    // Compare what a reader would see: serde_json's float parsing is not an exact
    // inverse of its printing, so a ranking compared with its own parsed copy could
    // differ in the last bit and be rewritten on every refresh.
    let as_read = Ranking::from_json(&ranking.to_json())
        .map_err(|e| Error::Invalid(format!("the computed ranking does not read back: {e}")))?;
    if current.is_some_and(|c| c.same_content(&as_read)) {
        return Ok(Refreshed::Unchanged);
    }
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(target.name.clone()),
            namespace: Some(target.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "spotkube".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            CONFIGMAP_KEY.to_string(),
            ranking.to_json(),
        )])),
        ..Default::default()
    };
    let mut value =
        serde_json::to_value(&cm).map_err(|e| Error::Invalid(format!("ranking ConfigMap: {e}")))?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    api.patch(
        &target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .kube("apply", &object)?;
    Ok(Refreshed::Written)
}
