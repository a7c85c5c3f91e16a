//! Interruption events → marks on the Node first, then the protection of what runs
//! there, as the marked Node calls for.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use spotkube_shared::annotations::{InterruptionKind, InterruptionNotice};
use spotkube_shared::events::{EventDetail, HealthStatus, InstanceState, SpotEvent};

use super::drain::drain;
use super::{Action, NodeView, Owner, PodView, TaintEffect, evict};

/// How far ahead of a planned change (AWS Health) its drain begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planning {
    pub scheduled_change_lead: Duration,
}

impl Default for Planning {
    fn default() -> Self {
        Planning {
            scheduled_change_lead: Duration::from_secs(15 * 60),
        }
    }
}

/// The whole decision for one event on one node: the Node's marks, then what the
/// marked Node calls for on its workloads.
pub fn decide(
    event: &SpotEvent,
    node: &NodeView,
    pods: &[PodView],
    now: Timestamp,
    planning: &Planning,
) -> Vec<Action> {
    let mut actions = node_marks(event, node, now, planning);
    let marked = node.after(&actions);
    actions.extend(workloads(event, &marked, pods, now));
    actions
}

/// What the event does to the Node itself, decided from the Node alone, so it is
/// carried out before any workload is read: a failed owner lookup never delays the
/// taint.
pub fn node_marks(
    event: &SpotEvent,
    node: &NodeView,
    now: Timestamp,
    planning: &Planning,
) -> Vec<Action> {
    let key = surge_key(node, event);
    let source = first_source(node);
    match &event.detail {
        EventDetail::SpotInterruption { deadline, .. } => mark(
            node,
            TaintEffect::NoSchedule,
            true,
            InterruptionNotice {
                kind: InterruptionKind::SpotInterruption,
                deadline: Some(*deadline),
                event_id: Some(key),
                drain_from: None,
                source,
            },
        ),
        EventDetail::RebalanceRecommendation { .. } => {
            // Elevated risk never replaces a graver or planned notice.
            let graver = node
                .notice
                .as_ref()
                .is_some_and(|n| n.kind != InterruptionKind::RebalanceRecommendation);
            if graver {
                return Vec::new();
            }
            let notice = InterruptionNotice {
                kind: InterruptionKind::RebalanceRecommendation,
                deadline: None,
                event_id: Some(key),
                drain_from: None,
                source: None,
            };
            mark(node, TaintEffect::PreferNoSchedule, false, notice)
        }
        EventDetail::ScheduledChange(change) => {
            let ours = node.notice.as_ref().filter(|n| {
                n.kind == InterruptionKind::ScheduledChange
                    && n.event_id.as_deref() == Some(&change.dedupe_key())
            });
            if change.status == HealthStatus::Closed {
                // Over or cancelled: the instance stays, so do its pods.
                return match ours {
                    Some(notice) => vec![Action::CleanNode {
                        uncordon: notice.is_imminent(),
                    }],
                    None => Vec::new(),
                };
            }
            if node.notice.as_ref().is_some_and(|n| n.is_imminent()) {
                return Vec::new(); // draining already: never weaken it
            }
            let drain_from = change
                .start
                .and_then(|start| {
                    start
                        .checked_sub(signed(planning.scheduled_change_lead))
                        .ok()
                })
                .filter(|from| *from > now);
            let notice = InterruptionNotice {
                kind: InterruptionKind::ScheduledChange,
                deadline: change.start,
                event_id: Some(key),
                drain_from,
                source,
            };
            match drain_from {
                // Planned: prefer other nodes now, drain from the lead time on.
                Some(_) => mark(node, TaintEffect::PreferNoSchedule, false, notice),
                None => mark(node, TaintEffect::NoSchedule, true, notice),
            }
        }
        EventDetail::StateChange { state, .. } => {
            if node.taint.is_none() && node.notice.is_none() {
                return Vec::new();
            }
            if state.is_ending() {
                return vec![Action::CleanNode { uncordon: false }];
            }
            // Back after its window (a stopped or hibernated spot instance, a
            // retirement the instance survived): spotkube's marks go, and its cordon.
            let back = *state == InstanceState::Running
                && node
                    .notice
                    .as_ref()
                    .and_then(|n| n.deadline)
                    .is_none_or(|deadline| event.envelope.time >= deadline);
            if back {
                let cordoned = node.notice.as_ref().is_some_and(|n| n.is_imminent())
                    || node.taint == Some(TaintEffect::NoSchedule);
                vec![Action::CleanNode {
                    uncordon: cordoned && node.unschedulable,
                }]
            } else {
                Vec::new()
            }
        }
    }
}

/// The drain a planned change's lead time has reached: taint, cordon, and record
/// that the drain began (the notice becomes imminent).
pub fn due_marks(node: &NodeView, now: Timestamp) -> Vec<Action> {
    match node.notice.as_ref().filter(|n| n.drain_due(now)) {
        Some(notice) => mark(
            node,
            TaintEffect::NoSchedule,
            true,
            InterruptionNotice {
                drain_from: None,
                ..notice.clone()
            },
        ),
        None => Vec::new(),
    }
}

/// What a marked Node calls for on its workloads after `event`.
pub fn workloads(
    event: &SpotEvent,
    marked: &NodeView,
    pods: &[PodView],
    now: Timestamp,
) -> Vec<Action> {
    if marked.notice.as_ref().is_some_and(|n| n.is_imminent()) {
        return drain(marked, pods, now);
    }
    match event.detail {
        // Single-replica StatefulSets cannot surge (two pods may never share one
        // identity): on a recommendation they move while there is time.
        EventDetail::RebalanceRecommendation { .. } => pods
            .iter()
            .filter(|p| !p.done && p.policy.enabled)
            .filter(|p| matches!(p.owner, Owner::StatefulSet { replicas: 1, .. }))
            .map(|p| evict(p, None))
            .collect(),
        _ => Vec::new(),
    }
}

/// The source of the node's first imminent notice: an EventBridge event for a node an
/// external tool marked first keeps that tool's source (it still drains the node).
fn first_source(node: &NodeView) -> Option<String> {
    node.notice
        .as_ref()
        .filter(|n| n.is_imminent())
        .and_then(|n| n.source.clone())
}

/// The key workloads are surged under: the node's first imminent event's, so a
/// later event for the same node never surges them again.
fn surge_key(node: &NodeView, event: &SpotEvent) -> String {
    node.notice
        .as_ref()
        .filter(|n| n.is_imminent())
        .and_then(|n| n.event_id.clone())
        .unwrap_or_else(|| event.dedupe_key())
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
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
