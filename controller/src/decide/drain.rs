//! The drain reconcile's decision for a marked Node.

use jiff::Timestamp;

use super::surge::protect_workloads;
use super::{Action, NodeView, PodView};

/// On a Node whose imminent notice is still ahead, protect what is still there (a
/// restarted controller thereby finishes evictions a crash cut short; surges stay
/// deduplicated by the workload's `spotkube.io/reason`). A notice without a deadline
/// (a Health change without a start time) is protected until the node goes.
pub fn drain(node: &NodeView, pods: &[PodView], now: Timestamp) -> Vec<Action> {
    let Some(notice) = node.notice.as_ref().filter(|n| n.is_imminent()) else {
        return Vec::new();
    };
    let Some(key) = notice.event_id.as_deref() else {
        return Vec::new();
    };
    if notice.deadline.is_some_and(|deadline| now >= deadline) {
        return Vec::new();
    }
    protect_workloads(pods, key, notice.deadline, now)
}
