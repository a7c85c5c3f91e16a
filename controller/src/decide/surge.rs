//! Which workloads surge and how: a rollout restart when the strategy brings the
//! replacement up first, else a scaled surge held for a while; everything else is
//! evicted once the surges have started.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use spotkube_shared::annotations::{Fallback, Surge};
use spotkube_shared::policy::Policy;

use super::{Action, DeploymentView, Owner, PodView, RolloutStrategy, evict};

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

/// For each opted-in workload with a pod on the node: surge single-replica
/// Deployments, evict the rest (DaemonSet, mirror and bare pods stay).
pub(super) fn protect_workloads(
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
            // Fargate takes it: its rollout replaces the pods (a single replica's surge is
            // what happens when no profile covers the namespace).
            Owner::Deployment(d) if pod.policy.fallback == Fallback::Fargate => {
                if seen.insert((pod.namespace.clone(), d.name.clone())) {
                    let single = d.replicas == 1 && pod.policy.surge != Surge::Off;
                    let instead = single
                        .then(|| surge(&pod.namespace, d, pod.policy, key, now))
                        .flatten()
                        .map(Box::new);
                    surges.push(Action::FailoverToFargate {
                        namespace: pod.namespace.clone(),
                        name: d.name.clone(),
                        reason: key.to_string(),
                        instead,
                    });
                }
                if d.replicas > 1 {
                    evictions.push(evict(pod, deadline));
                }
            }
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
