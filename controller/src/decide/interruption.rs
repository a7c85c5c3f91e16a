//! Interruption events → marks on the Node and protection of what runs there.

use jiff::Timestamp;
use spotkube_shared::annotations::{InterruptionKind, InterruptionNotice};
use spotkube_shared::events::{EventDetail, SpotEvent};

use super::surge::protect_workloads;
use super::{Action, NodeView, Owner, PodView, TaintEffect, evict};

/// The decision for one event on one node.
pub fn decide(event: &SpotEvent, node: &NodeView, pods: &[PodView], now: Timestamp) -> Vec<Action> {
    let key = event.dedupe_key();
    match &event.detail {
        EventDetail::SpotInterruption { deadline, .. } => {
            let notice = InterruptionNotice {
                kind: InterruptionKind::SpotInterruption,
                deadline: Some(*deadline),
                event_id: Some(key.clone()),
            };
            let mut actions = mark(node, TaintEffect::NoSchedule, true, notice);
            actions.extend(protect_workloads(pods, &key, Some(*deadline), now));
            actions
        }
        EventDetail::RebalanceRecommendation { .. } => early_warning(
            node,
            pods,
            InterruptionKind::RebalanceRecommendation,
            None,
            &key,
        ),
        EventDetail::ScheduledChange(change) => early_warning(
            node,
            pods,
            InterruptionKind::ScheduledChange,
            change.start,
            &key,
        ),
        EventDetail::StateChange { state, .. } => {
            if state.is_ending() && (node.taint.is_some() || node.notice.is_some()) {
                vec![Action::CleanNode]
            } else {
                Vec::new()
            }
        }
    }
}

/// Rebalance / scheduled change: prefer not to schedule here, and move single-replica
/// StatefulSets now (they cannot surge: two pods may never share one identity).
fn early_warning(
    node: &NodeView,
    pods: &[PodView],
    kind: InterruptionKind,
    deadline: Option<Timestamp>,
    key: &str,
) -> Vec<Action> {
    // Never weaken an imminent interruption already recorded.
    if node
        .notice
        .as_ref()
        .is_some_and(InterruptionNotice::is_imminent)
        && node.taint == Some(TaintEffect::NoSchedule)
        && kind == InterruptionKind::RebalanceRecommendation
    {
        return Vec::new();
    }
    let notice = InterruptionNotice {
        kind,
        deadline,
        event_id: Some(key.to_string()),
    };
    let effect = if node.taint == Some(TaintEffect::NoSchedule) {
        TaintEffect::NoSchedule
    } else {
        TaintEffect::PreferNoSchedule
    };
    let mut actions = mark(node, effect, false, notice);
    for pod in pods.iter().filter(|p| !p.done && p.policy.enabled) {
        if let Owner::StatefulSet { replicas: 1, .. } = pod.owner {
            actions.push(evict(pod, None));
        }
    }
    actions
}

fn mark(
    node: &NodeView,
    effect: TaintEffect,
    cordon: bool,
    notice: InterruptionNotice,
) -> Vec<Action> {
    let already = node.taint == Some(effect)
        && (node.unschedulable || !cordon)
        && node.notice.as_ref() == Some(&notice);
    if already {
        Vec::new()
    } else {
        vec![Action::MarkNode {
            effect,
            cordon,
            notice,
        }]
    }
}
