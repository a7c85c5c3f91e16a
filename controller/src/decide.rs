//! Pure decisions: an event and a view of the cluster in, a list of actions out.
//!
//! Nothing here talks to the API server; `act` carries the actions out. Every decision
//! is idempotent against the state spotkube leaves in the API (the Node's taint and
//! notice, the workload's `spotkube.io/reason`), so deciding again on a redelivered
//! message yields no duplicate surge.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use spotkube_shared::annotations::{InterruptionKind, InterruptionNotice, Surge};
use spotkube_shared::events::{EventDetail, SpotEvent};
use spotkube_shared::policy::Policy;

/// The taint effects spotkube uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        }
    }
}

/// What spotkube knows about the Node an event is about.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub unschedulable: bool,
    /// The effect of spotkube's taint, when present.
    pub taint: Option<TaintEffect>,
    /// The parsed `spotkube.io/interruption` annotation.
    pub notice: Option<InterruptionNotice>,
}

/// What owns a pod, as far as spotkube's decisions care.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    Deployment(DeploymentView),
    StatefulSet {
        name: String,
        replicas: i32,
    },
    /// A ReplicaSet not owned by a Deployment, a Job, ...: evicted like any replica.
    OtherController {
        kind: String,
        name: String,
    },
    DaemonSet,
    /// A static pod's mirror: the kubelet owns it.
    Mirror,
    /// A bare pod: evicting it would lose it for good.
    None,
}

/// The parts of a Deployment the surge decision needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentView {
    pub name: String,
    pub replicas: i32,
    pub strategy: RolloutStrategy,
    pub hpa_managed: bool,
    /// `spotkube.io/reason`: the dedupe key of the event spotkube last surged it for.
    pub surged_for: Option<String>,
    /// `spotkube.io/surge-from`, when a scaled surge is in progress.
    pub surge_from: Option<i32>,
}

/// A Deployment's `spec.strategy`, unresolved.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutStrategy {
    Recreate,
    RollingUpdate {
        max_surge: Option<IntOrString>,
        max_unavailable: Option<IntOrString>,
    },
}

impl RolloutStrategy {
    /// Whether a rollout of `replicas` brings the new pod up before taking an old one
    /// down: RollingUpdate whose maxUnavailable rounds (down) to 0 and maxSurge rounds
    /// (up) to at least 1. Defaults are 25 % / 25 %: for one replica, surge 1,
    /// unavailable 0. (When both round to 0 Kubernetes forces maxUnavailable to 1.)
    pub fn surges(&self, replicas: i32) -> bool {
        let RolloutStrategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } = self
        else {
            return false;
        };
        let quarter = IntOrString::String("25%".into());
        let surge = scaled(max_surge.as_ref().unwrap_or(&quarter), replicas, true);
        let unavailable = scaled(
            max_unavailable.as_ref().unwrap_or(&quarter),
            replicas,
            false,
        );
        match (surge, unavailable) {
            (Some(s), Some(u)) => s >= 1 && u == 0,
            _ => false,
        }
    }
}

/// Resolves an int-or-percent against `total` as the Deployment controller does
/// (maxSurge rounds up, maxUnavailable down). `None` when malformed.
fn scaled(value: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match value {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => {
            let percent: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            let product = percent * i64::from(total);
            let value = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            i32::try_from(value).ok()
        }
    }
}

/// One pod on the node, with its owner and resolved policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub owner: Owner,
    pub policy: Policy,
    /// Terminating or finished pods need nothing more.
    pub done: bool,
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Taint (or re-taint with a stronger effect), optionally cordon, and record the
    /// notice on the Node: one patch, so the record and the taint come together.
    MarkNode {
        effect: TaintEffect,
        cordon: bool,
        notice: InterruptionNotice,
    },
    /// Rollout restart (pod template `kubectl.kubernetes.io/restartedAt`).
    RestartDeployment {
        namespace: String,
        name: String,
        reason: String,
    },
    /// Scale 1→2 recording `surge-from` / `surge-until`.
    ScaleDeployment {
        namespace: String,
        name: String,
        from: i32,
        to: i32,
        until: Timestamp,
        reason: String,
    },
    /// Evict through the Eviction API (PDBs respected), retrying until `deadline`.
    Evict {
        namespace: String,
        name: String,
        deadline: Option<Timestamp>,
    },
    /// Remove spotkube's taint and notice (the Node itself is never deleted).
    CleanNode,
}

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

fn evict(pod: &PodView, deadline: Option<Timestamp>) -> Action {
    Action::Evict {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        deadline,
    }
}

/// For each opted-in workload with a pod on the node: surge single-replica
/// Deployments, evict the rest (DaemonSet, mirror and bare pods stay).
fn protect_workloads(
    pods: &[PodView],
    key: &str,
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> Vec<Action> {
    let mut surges = Vec::new();
    let mut evictions = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for pod in pods.iter().filter(|p| !p.done && p.policy.enabled) {
        match &pod.owner {
            Owner::DaemonSet | Owner::Mirror | Owner::None => {}
            // Already surged (for this event, or a scaled surge still held): its pods
            // stay until the replacement has taken over.
            Owner::Deployment(d)
                if d.surged_for.as_deref() == Some(key) || d.surge_from.is_some() => {}
            Owner::Deployment(d) if d.replicas == 1 && pod.policy.surge != Surge::Off => {
                if seen.insert((pod.namespace.clone(), d.name.clone())) {
                    surges.extend(surge(&pod.namespace, d, pod.policy, key, now));
                }
            }
            _ => evictions.push(evict(pod, deadline)),
        }
    }
    // Surges first: every replacement starts before anything is evicted.
    surges.extend(evictions);
    surges
}

/// The surge of one single-replica Deployment, or nothing when already surged.
fn surge(
    namespace: &str,
    d: &DeploymentView,
    policy: Policy,
    key: &str,
    now: Timestamp,
) -> Option<Action> {
    if d.surged_for.as_deref() == Some(key) || d.surge_from.is_some() {
        return None;
    }
    let restart = match policy.surge {
        Surge::Restart => true,
        Surge::Scale => d.hpa_managed,
        _ => d.hpa_managed || d.strategy.surges(d.replicas),
    };
    Some(if restart {
        Action::RestartDeployment {
            namespace: namespace.to_string(),
            name: d.name.clone(),
            reason: key.to_string(),
        }
    } else {
        Action::ScaleDeployment {
            namespace: namespace.to_string(),
            name: d.name.clone(),
            from: d.replicas,
            to: d.replicas + 1,
            until: hold_until(now, policy.surge_hold),
            reason: key.to_string(),
        }
    })
}

fn hold_until(now: Timestamp, hold: Duration) -> Timestamp {
    now.checked_add(hold).unwrap_or(Timestamp::MAX)
}

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

/// What the scale-back reconcile does with a Deployment carrying `surge-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleBack {
    /// Not yet due.
    Wait,
    /// Due and untouched: scale to `replicas` and drop the surge annotations.
    ScaleTo { replicas: i32 },
    /// Due, but someone changed replicas meanwhile: drop the annotations only.
    Forget,
}

/// Scale back only if replicas still equals the surged value (`from + 1`).
pub fn scale_back(from: i32, until: Timestamp, current_replicas: i32, now: Timestamp) -> ScaleBack {
    if now < until {
        ScaleBack::Wait
    } else if current_replicas == from + 1 {
        ScaleBack::ScaleTo { replicas: from }
    } else {
        ScaleBack::Forget
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
