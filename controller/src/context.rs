//! What every part of the controller works with, built once per process: the API
//! client, the Event recorder, the metrics, the watch-fed indexes and the AWS clients.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use spotkube_shared::policy::Policy;

use crate::metrics::Metrics;
use crate::nodes_index::NodesIndex;

/// Shared by the intake, the reconcile loops and the actions. Cloning is cheap.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    recorder: Arc<Recorder>,
    pub metrics: Metrics,
    /// EC2 instance id → Node, and the Nodes spotkube marked.
    pub nodes: NodesIndex,
    pub sqs: aws_sdk_sqs::Client,
    /// The policy of a pod no annotation says anything about.
    pub defaults: Policy,
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
            client,
            metrics,
            nodes,
            sqs,
            defaults: Policy::default(),
        }
    }

    /// Emits a Kubernetes Event; failure to record one never fails the action.
    pub async fn event(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, object).await {
            tracing::warn!(%error, reason, "could not record a Kubernetes Event");
        }
    }
}
