//! The ranking reconcile: refresh the price ranking every interval and publish it
//! (only on change; a failed refresh keeps the last good one published). The leader
//! is the ConfigMap's only writer.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use spotkube_shared::ranking::Criteria;
use tokio_util::sync::CancellationToken;

use crate::pricing::refresher::{RefreshMetrics, Refreshed, Target, refresh_once};
use crate::pricing::{AnySource, LatestBook, PriceSource};

/// Refreshes every `interval` until `cancel` fires. Run it on the leader only. Each
/// gathered price book is kept in `latest` (for the savings loop).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    source: Arc<AnySource>,
    criteria: Criteria,
    interval: Duration,
    target: Target,
    metrics: RefreshMetrics,
    latest: LatestBook,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics.refreshes.inc();
        match refresh_once(&client, &target, source.as_ref(), &criteria, &latest).await {
            Ok(outcome) => {
                metrics
                    .last_success_seconds
                    .set(jiff::Timestamp::now().as_second());
                if outcome == Refreshed::Written {
                    metrics.writes.inc();
                    tracing::info!(source = source.name(), configmap = %format!("{}/{}", target.namespace, target.name), "ranking changed; published");
                } else {
                    tracing::debug!("ranking unchanged");
                }
            }
            Err(e) => {
                metrics.failures.inc();
                tracing::error!(
                    error = format!("{e:#}"),
                    "ranking refresh failed; the last good ranking stays published"
                );
            }
        }
    }
}
