//! The leader's periodic loops: each looks at the cluster as it is and moves it one step
//! towards what spotkube promised, so a restarted or newly elected controller picks up
//! where the last one left off.
//!
//! - [`capacity`]: bring replacement capacity before a Node at risk is removed.
//! - [`fargate`]: follow Fargate failovers, and bring workloads back to spot.
//! - [`drain`]: protect what still runs on a marked Node until its deadline.
//! - [`scale_back`]: end scaled surges whose hold is over.
//! - [`ranking`]: refresh and publish the price ranking.
//! - [`unscheduled`]: report pods spotkube's scheduler has not picked up (it is down).
//! - [`pending`]: report opted-in pods left Unschedulable, and scale their pool up.
//! - [`namespace_labels`]: mirror the opt-in annotation to the label the webhook selects.
//! - [`savings`]: compute what opted-in workloads cost and export it as metrics.
//! - [`external_signals`]: act on what Karpenter, NTH or Cluster Autoscaler do to a Node.
//! - [`extender_health`]: count pods scheduled while the extender is down (no prices).

pub mod capacity;
pub mod drain;
pub mod extender_health;
pub mod external_signals;
pub mod fargate;
pub mod namespace_labels;
pub mod pending;
pub mod ranking;
pub mod savings;
pub mod scale_back;
pub mod unscheduled;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sleeps `every`; `false` when `stop` fired first.
async fn tick(every: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(every) => true,
    }
}
