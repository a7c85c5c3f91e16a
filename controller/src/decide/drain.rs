//! The drain reconcile's decision for a marked Node.

use jiff::Timestamp;

use super::external::drained_by_source;
use super::surge::protect_workloads;
use super::{Action, NodeView, PodView};

/// On a Node whose imminent notice is still ahead, protect what is still there (a
/// restarted controller thereby finishes evictions a crash cut short; surges stay
/// deduplicated by the workload's `spotkube.io/reason`). A notice without a deadline
/// (a Health change without a start time) is protected until the node goes.
///
/// When the notice's source drains the node itself (NTH, Karpenter, Cluster
/// Autoscaler), spotkube evicts nothing, and each surge is preceded by an eviction
/// guard: the tool's drain waits until the replacement is Ready.
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
    let actions = protect_workloads(pods, key, notice.deadline, now);
    if !drained_by_source(notice) {
        return actions;
    }
    let mut guarded = Vec::new();
    for action in actions {
        match &action {
            Action::Evict { .. } => {}
            Action::RestartDeployment {
                namespace, name, ..
            }
            | Action::ScaleDeployment {
                namespace, name, ..
            } => {
                guarded.push(Action::GuardEvictions {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    until: notice.deadline,
                });
                guarded.push(action);
            }
            _ => guarded.push(action),
        }
    }
    guarded
}
