//! The SQS consumer: long-poll, parse, decide, act, and delete a message only once its
//! action is recorded on the Node. A crash anywhere means redelivery, and deciding
//! again on a marked Node changes nothing, so the end state is the same.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::Message;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use spotkube_shared::events::{self, ParseError, SpotEvent};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

use crate::act::Actor;
use crate::decide;
use crate::error::{KubeResultExt, Result};
use crate::view;

/// The consumer of one leadership term.
#[derive(Clone)]
pub struct Intake {
    pub actor: Actor,
    pub queue_url: String,
    pub visibility_timeout: Duration,
}

/// What happened to one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acted on (or nothing to do): delete it.
    Done,
    /// Not for this cluster or not for spotkube: delete it.
    NotOurs,
    /// Unparseable or unknown kind: keep it, the queue's DLQ takes it after
    /// maxReceiveCount receives.
    Rejected,
    /// Acting failed: keep it, it is redelivered after the visibility timeout.
    Failed,
}

impl Outcome {
    pub fn deletes(&self) -> bool {
        matches!(self, Outcome::Done | Outcome::NotOurs)
    }
}

impl Intake {
    /// Long-polls until `stop` is cancelled. A batch in progress is finished first.
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(queue = %self.queue_url, "consuming interruption events");
        let mut backoff = Duration::from_secs(1);
        while !stop.is_cancelled() {
            let receive = self
                .actor
                .ctx
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(20)
                .visibility_timeout(self.visibility_timeout.as_secs() as i32)
                .send();
            let output = tokio::select! {
                _ = stop.cancelled() => return,
                output = receive => output,
            };
            match output {
                Ok(output) => {
                    backoff = Duration::from_secs(1);
                    // A reclaim wave hits many nodes at once: act on the batch together.
                    let batch = output.messages.unwrap_or_default();
                    futures::future::join_all(batch.into_iter().map(|m| self.handle(m))).await;
                }
                Err(error) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "receiving from SQS failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn handle(&self, message: Message) {
        let received = Instant::now();
        let id = message.message_id.clone().unwrap_or_default();
        // One span per message: its id, the event's kind and id, and (per instance
        // below) the instance and its node; every log line of the message carries them.
        let span = tracing::info_span!("message", message_id = %id, kind = Empty, event = Empty);
        async move {
            let outcome = self
                .process(message.body.as_deref().unwrap_or(""), received)
                .await;
            tracing::debug!(?outcome, "message handled");
            if outcome.deletes()
                && let Some(handle) = message.receipt_handle
                && let Err(error) = self
                    .actor
                    .ctx
                    .sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
            {
                // Redelivered later; acting again is harmless.
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "deleting the message failed");
            }
        }
        .instrument(span)
        .await
    }

    /// Parses and acts on one message body.
    pub async fn process(&self, body: &str, received: Instant) -> Outcome {
        let event = match events::parse(body) {
            Ok(event) => event,
            Err(ParseError::Irrelevant { .. }) => {
                self.actor.ctx.metrics.event("irrelevant");
                return Outcome::NotOurs;
            }
            Err(error) => {
                let kind = match error {
                    ParseError::Unknown { .. } => "unknown",
                    _ => "unparseable",
                };
                self.actor.ctx.metrics.event(kind);
                tracing::warn!(%error, "message rejected; left for the dead-letter queue");
                return Outcome::Rejected;
            }
        };
        self.actor.ctx.metrics.event(event.kind().as_str());
        let span = tracing::Span::current();
        span.record("kind", event.kind().as_str());
        span.record("event", event.envelope.id.as_str());
        let mut outcome = Outcome::NotOurs;
        for instance in event.instance_ids() {
            let Some(node) = self.actor.ctx.nodes.node_for(instance) else {
                tracing::debug!(instance, "instance is not a node of this cluster");
                continue;
            };
            let span = tracing::info_span!("instance", instance, node);
            span.in_scope(|| tracing::info!("event received"));
            match self
                .act_on(&event, &node, received)
                .instrument(span.clone())
                .await
            {
                Ok(()) => {
                    if outcome != Outcome::Failed {
                        outcome = Outcome::Done;
                    }
                }
                Err(error) => {
                    span.in_scope(|| {
                        tracing::warn!(%error, "acting on the event failed; it will be redelivered")
                    });
                    outcome = Outcome::Failed;
                }
            }
        }
        outcome
    }

    async fn act_on(&self, event: &SpotEvent, node_name: &str, received: Instant) -> Result<()> {
        let ctx = &self.actor.ctx;
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let Some(node) = nodes
            .get_opt(node_name)
            .await
            .kube("get", format_args!("node/{node_name}"))?
        else {
            return Ok(()); // gone meanwhile: nothing left to protect
        };
        let node_view = view::node_view(&node);
        let pods = view::pods_on(&ctx.client, node_name, &ctx.defaults).await?;
        let actions = decide::decide(event, &node_view, &pods, Timestamp::now());
        tracing::debug!(?actions, "decided");
        self.actor.execute(node_name, actions, received).await?;
        Ok(())
    }
}
