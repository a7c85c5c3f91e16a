//! What every part of the controller works with, built once per process: the API
//! client, the Event recorder, the metrics, the watch-fed indexes and the AWS clients.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use spotkube_shared::policy::Policy;

use crate::capacity::ice::IceCache;
use crate::decide::PodView;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::nodes_index::NodesIndex;
use crate::notify::Notifier;
use crate::view::{self, OwnerCache};

/// Seconds between the retries of an Event the API server refused (about a minute).
const EVENT_RETRIES: [u64; 6] = [1, 2, 4, 8, 15, 30];

/// The longest Event note the API server accepts.
const MAX_NOTE: usize = 1024;

/// Shared by the intake, the reconcile loops and the actions. Cloning is cheap.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    /// The client evictions go through: the same API server without kube-client's
    /// retries, whose 429 retry (up to 15 times, backoff to minutes) would otherwise hide
    /// every PodDisruptionBudget refusal inside one call for longer than a spot warning.
    pub evictions: Client,
    recorder: Arc<Recorder>,
    pub metrics: Metrics,
    /// EC2 instance id → Node, and the Nodes spotkube marked.
    pub nodes: NodesIndex,
    pub sqs: aws_sdk_sqs::Client,
    /// The policy of a pod no annotation says anything about.
    pub defaults: Policy,
    /// Owner facts (namespaces, ReplicaSet owners, HPA targets), cached across calls.
    pub owners: OwnerCache,
    /// Offerings that just failed to launch or are being reclaimed (shared by the
    /// capacity loop, which marks them, and the ranking publisher, which lists them).
    pub ice: IceCache,
    /// Fargate failover and recovery, when profiles are configured.
    pub fargate: Option<Arc<crate::fargate::Settings>>,
    /// Notifications of the Events below, when a webhook is configured.
    notifier: Option<Notifier>,
}

impl Context {
    /// `instance` names this replica in the Events it records.
    pub fn new(
        client: Client,
        instance: Option<String>,
        metrics: Metrics,
        nodes: NodesIndex,
        sqs: aws_sdk_sqs::Client,
    ) -> Context {
        let reporter = Reporter {
            controller: "spotkube-controller".into(),
            instance,
        };
        Context {
            recorder: Arc::new(Recorder::new(client.clone(), reporter)),
            evictions: client.clone(),
            client,
            metrics,
            nodes,
            sqs,
            defaults: Policy::default(),
            owners: OwnerCache::default(),
            ice: IceCache::default(),
            fargate: None,
            notifier: None,
        }
    }

    /// Evictions go through `client` (built without kube-client's retries).
    pub fn with_eviction_client(mut self, client: Client) -> Context {
        self.evictions = client;
        self
    }

    /// Offerings stay marked unavailable for `ttl` (`--ice-ttl`).
    pub fn with_ice_ttl(mut self, ttl: std::time::Duration) -> Context {
        self.ice = IceCache::new(ttl);
        self
    }

    /// Workloads with `fallback: fargate` fail over to these profiles.
    pub fn with_fargate(mut self, settings: crate::fargate::Settings) -> Context {
        self.fargate = Some(Arc::new(settings));
        self
    }

    /// Every Event recorded from now on is also a notification (see [`crate::notify`]).
    pub fn with_notifier(mut self, notifier: Notifier) -> Context {
        self.notifier = Some(notifier);
        self
    }

    /// The pods on `node_name` with their owners and policies.
    pub async fn pods_on(&self, node_name: &str) -> Result<Vec<PodView>> {
        view::pods_on_cached(&self.client, &self.owners, node_name, &self.defaults).await
    }

    /// Emits a Kubernetes Event, and its notification; failure to record one never
    /// fails the action, nor does a slow notification receiver delay it.
    pub async fn event(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        mut note: String,
    ) {
        // The API server refuses notes over 1 KiB (an API error quoted whole is longer).
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE - 3;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        if let Some(notifier) = &self.notifier {
            notifier.notify(object, type_, reason, &note);
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, object).await {
            // The API server may be restarting: try again in the background for a minute
            // rather than lose the record of what spotkube did.
            tracing::warn!(%error, reason, "could not record a Kubernetes Event; retrying");
            let (recorder, object) = (self.recorder.clone(), object.clone());
            tokio::spawn(async move {
                for delay in EVENT_RETRIES {
                    tokio::time::sleep(Duration::from_secs(delay)).await;
                    match recorder.publish(&event, &object).await {
                        Ok(()) => return,
                        Err(error) => tracing::debug!(%error, "Event retry failed"),
                    }
                }
                tracing::warn!(reason = %event.reason, "gave up recording a Kubernetes Event");
            });
        }
    }
}
