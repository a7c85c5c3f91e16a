//! Carrying decisions out against the API server. Every touched object gets a
//! Kubernetes Event; every action a metric by outcome.

mod evict;
mod surge;
mod taint;

pub use surge::run_scale_back;

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::decide::Action;
use crate::metrics::Metrics;

/// What the actions need: a client, an Event recorder and the metrics.
#[derive(Clone)]
pub struct Actor {
    pub client: Client,
    recorder: Arc<Recorder>,
    pub metrics: Metrics,
    /// Evictions in progress (namespace, pod): the drain reconcile asks again.
    evicting: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

/// A failed action (the message stays on the queue and is redelivered).
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Conflict(String),
}

impl Actor {
    pub fn new(client: Client, instance: Option<String>, metrics: Metrics) -> Actor {
        let reporter = Reporter {
            controller: "spotkube-controller".into(),
            instance,
        };
        Actor {
            recorder: Arc::new(Recorder::new(client.clone(), reporter)),
            client,
            metrics,
            evicting: Arc::default(),
        }
    }

    /// Emits an Event; failure to record one never fails the action.
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

    /// Carries out `actions` in order for the node `node_name`. Evictions run in the
    /// background until their deadline; everything else is done when this returns.
    pub async fn execute(
        &self,
        node_name: &str,
        actions: Vec<Action>,
        received: Instant,
    ) -> Result<(), ActError> {
        for action in actions {
            let label = action_label(&action);
            let result = match action {
                Action::MarkNode {
                    effect,
                    cordon,
                    notice,
                } => {
                    let r = taint::mark(self, node_name, effect, cordon, &notice).await;
                    if r.is_ok() {
                        self.metrics
                            .receipt_to_taint
                            .observe(received.elapsed().as_secs_f64());
                    }
                    r
                }
                Action::CleanNode => taint::clean(self, node_name).await,
                Action::RestartDeployment {
                    namespace,
                    name,
                    reason,
                } => surge::restart(self, &namespace, &name, &reason, received).await,
                Action::ScaleDeployment {
                    namespace,
                    name,
                    from,
                    to,
                    until,
                    reason,
                } => {
                    surge::scale(self, &namespace, &name, from, to, until, &reason, received).await
                }
                Action::Evict {
                    namespace,
                    name,
                    deadline,
                } => {
                    let key = (namespace.clone(), name.clone());
                    if self
                        .evicting
                        .lock()
                        .expect("evicting lock")
                        .insert(key.clone())
                    {
                        let actor = self.clone();
                        tokio::spawn(async move {
                            evict::evict_until(&actor, &namespace, &name, deadline).await;
                            actor.evicting.lock().expect("evicting lock").remove(&key);
                        });
                    }
                    Ok(())
                }
            };
            self.metrics
                .action(label, if result.is_ok() { "ok" } else { "error" });
            result?;
        }
        Ok(())
    }
}

fn action_label(action: &Action) -> &'static str {
    match action {
        Action::MarkNode { .. } => "mark-node",
        Action::CleanNode => "clean-node",
        Action::RestartDeployment { .. } => "restart",
        Action::ScaleDeployment { .. } => "scale",
        Action::Evict { .. } => "evict",
    }
}
