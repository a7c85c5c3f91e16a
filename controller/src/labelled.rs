//! The Deployments labelled `spotkube.io/surging`, fed by a watch with that label
//! selector (through the shared [`spotkube_shared::watch`] driver). The scale-back
//! reconcile reads them from here, so its passes cost no API request however many
//! Deployments the cluster holds; only surges in progress are kept.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use spotkube_shared::admin::Gate;
use spotkube_shared::labels::{SURGING, SURGING_VALUE};
use spotkube_shared::watch::{self, WatchIndex};

/// Surging Deployments by (namespace, name). Cloning shares the index.
#[derive(Clone, Default)]
pub struct SurgingDeployments {
    inner: Arc<RwLock<BTreeMap<(String, String), Deployment>>>,
}

/// The label selector of the watch.
pub fn selector() -> String {
    format!("{SURGING}={SURGING_VALUE}")
}

fn key(d: &Deployment) -> (String, String) {
    (d.namespace().unwrap_or_default(), d.name_any())
}

fn is_surging(d: &Deployment) -> bool {
    d.labels().get(SURGING).map(String::as_str) == Some(SURGING_VALUE)
}

impl SurgingDeployments {
    /// Watches the labelled Deployments of the whole cluster into the index until the
    /// future is dropped; `synced` opens once the first list is in.
    pub async fn run(self, client: Client, synced: Gate) {
        let config = watcher::Config::default().labels(&selector());
        watch::watch(
            Api::<Deployment>::all(client),
            config,
            &self,
            &synced,
            "surging deployments",
        )
        .await;
    }

    /// Every surging Deployment, as last seen.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.inner
            .read()
            .expect("surging lock")
            .values()
            .cloned()
            .collect()
    }
}

impl WatchIndex<Deployment> for SurgingDeployments {
    type Entry = ((String, String), Deployment);

    fn entry(&self, d: &Deployment) -> Option<Self::Entry> {
        if !is_surging(d) {
            return None;
        }
        let mut kept = d.clone();
        // Not needed to decide or patch, and the largest part of the object.
        kept.metadata.managed_fields = None;
        Some((key(d), kept))
    }

    fn reset(&self, entries: Vec<Self::Entry>) {
        *self.inner.write().expect("surging lock") = entries.into_iter().collect();
    }

    fn apply(&self, d: &Deployment) {
        let mut inner = self.inner.write().expect("surging lock");
        match self.entry(d) {
            Some((key, kept)) => inner.insert(key, kept),
            None => inner.remove(&key(d)),
        };
    }

    fn delete(&self, d: &Deployment) {
        self.inner.write().expect("surging lock").remove(&key(d));
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;

    fn deployment(name: &str, surging: bool) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: surging.then(|| [(SURGING.to_string(), "true".to_string())].into()),
                managed_fields: Some(vec![Default::default()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(index: &SurgingDeployments) -> Vec<String> {
        index.deployments().iter().map(|d| d.name_any()).collect()
    }

    #[test]
    fn keeps_labelled_deployments_until_unlabelled_or_deleted() {
        let index = SurgingDeployments::default();
        index.reset(
            [deployment("web", true), deployment("plain", false)]
                .iter()
                .filter_map(|d| index.entry(d))
                .collect(),
        );
        assert_eq!(names(&index), ["web"]);
        assert!(index.deployments()[0].metadata.managed_fields.is_none());
        index.apply(&deployment("api", true));
        assert_eq!(names(&index), ["api", "web"]);
        // The surge ended: the label is gone, so is the entry.
        index.apply(&deployment("web", false));
        assert_eq!(names(&index), ["api"]);
        index.delete(&deployment("api", true));
        assert!(names(&index).is_empty());
    }
}
