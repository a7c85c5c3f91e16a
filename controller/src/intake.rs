//! The SQS consumer: long-poll, parse, decide, act, and delete a message only once its
//! action is recorded on the Node. A crash anywhere means redelivery, and deciding
//! again on a marked Node changes nothing, so the end state is the same.
//!
//! Messages are worked on concurrently (a bounded number, each within its own
//! deadline), and within a message the Node is marked from the Node alone before any
//! workload is read: neither a slow message nor a failed owner lookup delays a taint.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::Message;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use spotkube_shared::events::{self, EventDetail, ParseError, SpotEvent};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

use crate::act::Actor;
use crate::bounded::{Bounded, Ended};
use crate::capacity::request::Trigger;
use crate::decide::{self, Planning};
use crate::error::Error;
use crate::error::{KubeResultExt, Result};
use crate::view;

/// How long one receive waits for messages. A term that ends waits out the poll in
/// flight to hand its messages back, so this also bounds how long that takes.
const LONG_POLL: Duration = Duration::from_secs(10);

/// The consumer of one leadership term.
#[derive(Clone)]
pub struct Intake {
    pub actor: Actor,
    pub queue_url: String,
    pub visibility_timeout: Duration,
    /// The account and region events must come from.
    pub origin: crate::origin::Origin,
    pub planning: Planning,
    /// At most this many messages are worked on at once.
    pub concurrency: usize,
    /// The capacity loop's wake-up, when `--capacity` is on: the intake records a
    /// replacement request on the Node and wakes it.
    pub capacity_wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Each message's bound; past it the message is left for redelivery.
    pub message_deadline: Duration,
}

/// Clears `spotkube_controller_sqs_receive_failing` when the term's intake ends.
struct ClearFailing(crate::metrics::Metrics);

impl Drop for ClearFailing {
    fn drop(&mut self) {
        self.0.sqs_receive_failing.set(0);
    }
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
    /// Long-polls until `stop` is cancelled, never taking more messages than it has
    /// free slots for. Messages in progress end with the term (and are redelivered).
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(queue = %self.queue_url, "consuming interruption events");
        let slots = Bounded::new(
            self.concurrency,
            self.message_deadline,
            self.actor.tasks.clone(),
        );
        let mut backoff = Duration::from_secs(1);
        // A former leader receives nothing: it reports no failing receive.
        let _failing = ClearFailing(self.actor.ctx.metrics.clone());
        while !stop.is_cancelled() {
            let free = tokio::select! {
                _ = stop.cancelled() => return,
                free = slots.free() => free,
            };
            let receive = self
                .actor
                .ctx
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(free.min(10) as i32)
                .wait_time_seconds(LONG_POLL.as_secs() as i32)
                .visibility_timeout(self.visibility_timeout.as_secs() as i32)
                .send();
            let mut receive = std::pin::pin!(receive);
            let output = tokio::select! {
                output = &mut receive => output,
                _ = stop.cancelled() => {
                    // SQS answers a long poll already sent whether or not anyone still
                    // listens, and a message it hands to a dropped poll would stay hidden
                    // for the visibility timeout: take the answer and hand it back.
                    if let Ok(output) = receive.await {
                        self.hand_back(output.messages.unwrap_or_default()).await;
                    }
                    return;
                }
            };
            match output {
                Ok(output) => {
                    backoff = Duration::from_secs(1);
                    self.actor.ctx.metrics.sqs_receive(None);
                    for message in output.messages.unwrap_or_default() {
                        let intake = self.clone();
                        let metrics = self.actor.ctx.metrics.clone();
                        let id = message.message_id.clone().unwrap_or_default();
                        slots
                            .start("message", intake.handle(message), move |ended| {
                                if ended == Ended::TimedOut {
                                    metrics.action("message", "timed-out", "deadline");
                                    tracing::warn!(message_id = %id, "message passed its deadline; left for redelivery");
                                }
                            })
                            .await;
                    }
                }
                Err(error) => {
                    let reason = match crate::aws::is_throttling(&error) {
                        true => "throttled",
                        false => "error",
                    };
                    self.actor.ctx.metrics.sqs_receive(Some(reason));
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), reason, ?backoff, "receiving from SQS failed; backing off");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Makes received messages visible again at once, for the next leader.
    async fn hand_back(&self, messages: Vec<Message>) {
        for handle in messages.into_iter().filter_map(|m| m.receipt_handle) {
            let result = self
                .actor
                .ctx
                .sqs
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await;
            match result {
                Ok(_) => tracing::info!("message received after leadership ended: handed back"),
                Err(error) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "handing a message back failed; it reappears after the visibility timeout")
                }
            }
        }
    }

    async fn handle(self, message: Message) {
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
        if let Err(foreign) = self.origin.admits(&event.envelope) {
            self.actor.ctx.metrics.foreign_event(foreign.label());
            tracing::warn!(%foreign, "event from another account or region dropped");
            return Outcome::NotOurs;
        }
        self.actor.ctx.metrics.event(event.kind().as_str());
        let span = tracing::Span::current();
        span.record("kind", event.kind().as_str());
        span.record("event", event.envelope.id.as_str());
        // A Health event may name many instances: each node is worked on at once.
        let instances = event.instance_ids().into_iter().filter_map(|instance| {
            match self.actor.ctx.nodes.node_for(instance) {
                Some(node) => Some((instance, node)),
                None => {
                    tracing::debug!(instance, "instance is not a node of this cluster");
                    None
                }
            }
        });
        let event = &event;
        let results = futures::future::join_all(instances.map(|(instance, node)| {
            let span = tracing::info_span!("instance", instance, node);
            span.in_scope(|| tracing::info!("event received"));
            async move {
                let result = self.act_on(event, &node, received).await;
                if let Err(error) = &result {
                    tracing::warn!(%error, "acting on the event failed; it will be redelivered");
                }
                result
            }
            .instrument(span)
        }))
        .await;
        match results.iter().any(Result::is_err) {
            true => Outcome::Failed,
            false if results.is_empty() => Outcome::NotOurs,
            false => Outcome::Done,
        }
    }

    /// Marks the Node first, from the Node alone; then reads the pods on it and
    /// protects their workloads. Both halves are attempted whatever the other did.
    async fn act_on(&self, event: &SpotEvent, node_name: &str, received: Instant) -> Result<()> {
        // One decision at a time per Node (the external-signal watch decides too).
        let _held = self.actor.lock_node(node_name).await;
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
        let now = Timestamp::now();
        let marks = decide::node_marks(event, &node_view, now, &self.planning);
        let marked = node_view.after(&marks);
        tracing::debug!(?marks, "decided on the node");
        let marking = self.actor.execute_on(&node, marks, received).await;
        // The replacement is asked for beside the protection, never before it: a surge
        // does not wait for capacity to be recorded.
        let protecting = async {
            let pods = ctx.pods_on(node_name).await?;
            let actions = decide::workloads(event, &marked, &pods, now);
            tracing::debug!(?actions, "decided on the workloads");
            self.actor.execute(node_name, actions, received).await
        };
        let (replacing, protecting) = tokio::join!(self.want_capacity(event, &node), protecting);
        let failures: Vec<Error> = [marking, replacing, protecting]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        Error::collect(failures, 3)
    }

    /// A rebalance recommendation or an interruption warning asks for a replacement
    /// (recorded on the Node; the capacity loop carries it out).
    async fn want_capacity(&self, event: &SpotEvent, node: &Node) -> Result<()> {
        let Some(wake) = &self.capacity_wake else {
            return Ok(());
        };
        let (trigger, deadline) = match &event.detail {
            EventDetail::RebalanceRecommendation { .. } => (Trigger::Rebalance, None),
            EventDetail::SpotInterruption { deadline, .. } => {
                (Trigger::Interruption, Some(*deadline))
            }
            _ => return Ok(()),
        };
        crate::reconcile::capacity::record_wanted(&self.actor, wake, node, trigger, deadline).await
    }
}
