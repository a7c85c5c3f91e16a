//! Deployments carrying one of spotkube's labels, fed by a watch with that label
//! selector (through the shared [`spotkube_shared::watch`] driver): those with a scaled
//! surge in progress (`spotkube.io/surging`, read by the scale-back reconcile) and those
//! moved to Fargate (`spotkube.io/on-fargate`, read by the recovery loop). A pass reads
//! them from here, so it costs no API request however many Deployments the cluster
//! holds; only the labelled ones are kept.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use spotkube_shared::admin::Gate;
use spotkube_shared::labels::{FARGATE_WORKLOAD, FARGATE_WORKLOAD_VALUE, SURGING, SURGING_VALUE};
use spotkube_shared::watch::{self, WatchIndex};

/// Labelled Deployments by (namespace, name). Cloning shares the index.
#[derive(Clone)]
pub struct LabelledDeployments {
    label: &'static str,
    value: &'static str,
    inner: Arc<RwLock<BTreeMap<(String, String), Deployment>>>,
}

fn key(d: &Deployment) -> (String, String) {
    (d.namespace().unwrap_or_default(), d.name_any())
}

impl LabelledDeployments {
    fn new(label: &'static str, value: &'static str) -> Self {
        LabelledDeployments {
            label,
            value,
            inner: Arc::default(),
        }
    }

    /// Deployments with a scaled surge in progress.
    pub fn surging() -> Self {
        Self::new(SURGING, SURGING_VALUE)
    }

    /// Deployments on Fargate or on their way back.
    pub fn on_fargate() -> Self {
        Self::new(FARGATE_WORKLOAD, FARGATE_WORKLOAD_VALUE)
    }

    /// The label selector of the watch.
    pub fn selector(&self) -> String {
        format!("{}={}", self.label, self.value)
    }

    fn is_labelled(&self, d: &Deployment) -> bool {
        d.labels().get(self.label).map(String::as_str) == Some(self.value)
    }

    /// Watches the labelled Deployments of the whole cluster into the index until the
    /// future is dropped; `synced` opens once the first list is in.
    pub async fn run(self, client: Client, synced: Gate) {
        let config = watcher::Config::default().labels(&self.selector());
        let what = format!("deployments labelled {}", self.label);
        watch::watch(
            Api::<Deployment>::all(client),
            config,
            &self,
            &synced,
            &what,
        )
        .await;
    }

    /// Every labelled Deployment, as last seen.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.inner
            .read()
            .expect("labelled lock")
            .values()
            .cloned()
            .collect()
    }
}

impl WatchIndex<Deployment> for LabelledDeployments {
    type Entry = ((String, String), Deployment);

    fn entry(&self, d: &Deployment) -> Option<Self::Entry> {
        if !self.is_labelled(d) {
            return None;
        }
        let mut kept = d.clone();
        // Not needed to decide or patch, and the largest part of the object.
        kept.metadata.managed_fields = None;
        Some((key(d), kept))
    }

    fn reset(&self, entries: Vec<Self::Entry>) {
        *self.inner.write().expect("labelled lock") = entries.into_iter().collect();
    }

    fn apply(&self, d: &Deployment) {
        let mut inner = self.inner.write().expect("labelled lock");
        match self.entry(d) {
            Some((key, kept)) => inner.insert(key, kept),
            None => inner.remove(&key(d)),
        };
    }

    fn delete(&self, d: &Deployment) {
        self.inner.write().expect("labelled lock").remove(&key(d));
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

    fn names(index: &LabelledDeployments) -> Vec<String> {
        index.deployments().iter().map(|d| d.name_any()).collect()
    }

    #[test]
    fn keeps_labelled_deployments_until_unlabelled_or_deleted() {
        let index = LabelledDeployments::surging();
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
