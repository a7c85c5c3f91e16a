//! The drain reconcile's decision for a marked Node.

use jiff::Timestamp;

use super::surge::protect_workloads;
use super::{Action, NodeView, PodView};

/// The drain reconcile: on a Node whose imminent notice is still ahead, protect what
/// is still there (a restarted controller thereby finishes evictions a crash cut short;
/// surges stay deduplicated by the workload's `spotkube.io/reason`).
pub fn drain(node: &NodeView, pods: &[PodView], now: Timestamp) -> Vec<Action> {
    let Some(notice) = node.notice.as_ref().filter(|n| n.is_imminent()) else {
        return Vec::new();
    };
    let (Some(deadline), Some(key)) = (notice.deadline, notice.event_id.as_deref()) else {
        return Vec::new();
    };
    if now >= deadline {
        return Vec::new();
    }
    protect_workloads(pods, key, Some(deadline), now)
}
