//! The one task that sends notifications: dedup, a rate limit per sink, posts. A slow
//! or failing receiver only ever delays this task, never an action.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dedup::Dedup;
use super::rate::RateLimit;
use super::sink::{Retry, Sink};
use super::{Kind, Named, Notification, Settings};
use crate::metrics::Metrics;

/// How often held-back notifications are looked at for a summary.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
const MINUTE: Duration = Duration::from_secs(60);

struct Target {
    sink: Sink,
    limit: RateLimit,
}

pub struct Sender {
    queue: mpsc::Receiver<Notification>,
    targets: Vec<Target>,
    dedup: Dedup<(Kind, Named, String)>,
    client: reqwest::Client,
    settings: Settings,
    metrics: Metrics,
}

impl Sender {
    pub(super) fn new(
        queue: mpsc::Receiver<Notification>,
        sinks: Vec<Sink>,
        client: reqwest::Client,
        settings: Settings,
        metrics: Metrics,
    ) -> Sender {
        Sender {
            queue,
            targets: sinks
                .into_iter()
                .map(|sink| Target {
                    sink,
                    limit: RateLimit::new(settings.per_minute, MINUTE),
                })
                .collect(),
            dedup: Dedup::new(settings.dedup_window),
            client,
            settings,
            metrics,
        }
    }

    /// Sends until `stop`, then what is still queued for at most
    /// [`Settings::drain_for`].
    pub async fn run(mut self, stop: CancellationToken) {
        let mut summaries = tokio::time::interval(SUMMARY_EVERY);
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                next = self.queue.recv() => match next {
                    Some(notification) => tokio::select! {
                        _ = self.deliver(notification) => {}
                        _ = stop.cancelled() => break,
                    },
                    // Every notifier is gone: nothing more will come.
                    None => return,
                },
                _ = summaries.tick() => self.summarise().await,
            }
        }
        let drain_for = self.settings.drain_for;
        let drain = async {
            while let Ok(notification) = self.queue.try_recv() {
                self.deliver(notification).await;
            }
            self.summarise().await;
        };
        if tokio::time::timeout(drain_for, drain).await.is_err() {
            tracing::warn!("shutdown: notifications still queued after {drain_for:?} are not sent");
        }
    }

    async fn deliver(&mut self, notification: Notification) {
        let now = Instant::now();
        if !self.dedup.first(notification.dedup_key(), now) {
            for target in &self.targets {
                self.metrics
                    .notification(target.sink.format.name(), "duplicate");
            }
            return;
        }
        let cluster = self.settings.cluster.as_deref();
        let mut bodies = Vec::new();
        for target in &mut self.targets {
            if target.limit.admit(now) {
                bodies.push((&target.sink, target.sink.payload(&notification, cluster)));
            } else {
                self.metrics
                    .notification(target.sink.format.name(), "rate_limited");
            }
        }
        let kind = notification.kind.as_str();
        post_all(
            &self.client,
            &self.metrics,
            self.settings.retry,
            bodies,
            kind,
        )
        .await;
    }

    /// Sends each sink's summary of what its rate limit held back, once it has room.
    async fn summarise(&mut self) {
        let now = Instant::now();
        let cluster = self.settings.cluster.as_deref();
        let time = jiff::Timestamp::now();
        let bodies: Vec<_> = self
            .targets
            .iter_mut()
            .filter_map(|t| {
                let count = t.limit.summary(now)?;
                Some((&t.sink, t.sink.summary(count, cluster, time)))
            })
            .collect();
        post_all(
            &self.client,
            &self.metrics,
            self.settings.retry,
            bodies,
            "suppressed",
        )
        .await;
    }
}

/// Posts to every sink at once: one slow receiver does not hold the other back.
async fn post_all(
    client: &reqwest::Client,
    metrics: &Metrics,
    retry: Retry,
    bodies: Vec<(&Sink, serde_json::Value)>,
    kind: &str,
) {
    let posts = bodies.into_iter().map(|(sink, body)| async move {
        let name = sink.format.name();
        match sink.post(client, &body, retry).await {
            Ok(()) => {
                tracing::debug!(sink = name, kind, "notification sent");
                metrics.notification(name, "sent");
            }
            Err(error) => {
                tracing::warn!(sink = name, kind, %error, "notification not sent");
                metrics.notification(name, "failed");
            }
        }
    });
    futures::future::join_all(posts).await;
}
