//! Pure decisions: an event and a view of the cluster in, a list of actions out.
//!
//! Nothing here talks to the API server; `act` carries the actions out. Every decision
//! is idempotent against the state spotkube leaves in the API (the Node's taint and
//! notice, the workload's `spotkube.io/reason`), so deciding again on a redelivered
//! message yields no duplicate surge.

mod drain;
pub mod external;
mod interruption;
mod scale_back;
mod surge;

pub use drain::drain;
pub use interruption::{Planning, decide, due_marks, node_marks, workloads};
pub use scale_back::{ScaleBack, SurgeNode, scale_back};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use spotkube_shared::annotations::InterruptionNotice;
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
    /// Before a surge on a Node another tool drains: a PodDisruptionBudget
    /// (minAvailable 1) over Deployment `name`'s pods, unless one already selects them,
    /// so the tool's evictions wait until the replacement is Ready. Removed once it is,
    /// or at `until`.
    GuardEvictions {
        namespace: String,
        name: String,
        until: Option<Timestamp>,
    },
    /// Move a `fallback: fargate` Deployment to Fargate (see [`crate::fargate`]); when
    /// no Fargate profile covers its namespace, `instead` (its surge) is carried out.
    FailoverToFargate {
        namespace: String,
        name: String,
        reason: String,
        instead: Option<Box<Action>>,
    },
    /// Evict through the Eviction API (PDBs respected), retrying until `deadline`.
    Evict {
        namespace: String,
        name: String,
        deadline: Option<Timestamp>,
    },
    /// Remove spotkube's taint and notice (the Node itself is never deleted), and
    /// spotkube's cordon when the instance came back.
    CleanNode { uncordon: bool },
}

impl NodeView {
    /// The Node as it is once `actions` (its marks) are carried out.
    pub fn after(&self, actions: &[Action]) -> NodeView {
        let mut node = self.clone();
        for action in actions {
            match action {
                Action::MarkNode {
                    effect,
                    cordon,
                    notice,
                } => {
                    node.taint = Some(*effect);
                    node.unschedulable |= cordon;
                    node.notice = Some(notice.clone());
                }
                Action::CleanNode { uncordon } => {
                    node.taint = None;
                    node.notice = None;
                    node.unschedulable &= !uncordon;
                }
                _ => {}
            }
        }
        node
    }
}

/// Eviction through the Eviction API, PDBs respected, until `deadline`.
fn evict(pod: &PodView, deadline: Option<Timestamp>) -> Action {
    Action::Evict {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        deadline,
    }
}

#[cfg(test)]
mod tests;
