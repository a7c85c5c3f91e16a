//! Fargate failover and recovery to spot.
//!
//! A Deployment whose policy says `fallback: fargate` leaves a reclaimed spot node for
//! Fargate: spotkube adds its namespace's Fargate profile labels to the pod template
//! (EKS's webhook then sends the new pods to Fargate) with a rollout that keeps every
//! old pod until the new ones are Ready. The leader's recovery loop
//! ([`crate::reconcile::fargate`]) follows each rollout to its verdict by the Services'
//! EndpointSlices and the rollout status, and after a cooldown brings the workload back
//! to spot when spot has room, rolling back with exponential backoff when it does not
//! become healthy. Everything is recorded on the Deployment ([`record`]), so a new
//! leader finishes what the last one started.
//!
//! StatefulSets do not fail over: a StatefulSet replaces a pod only after the old one
//! is gone (one identity, one pod), so a move to Fargate always has a gap, the very
//! thing this is for. They keep the surge-less path (evicted while there is time).
//!
//! - [`record`]: the annotation and the patch of each transition (pure).
//! - [`step`]: the loop's decisions (pure).
//! - [`health`]: rollout status, ready endpoints, Fargate's refusals.
//! - [`room`]: whether spot can take a workload back.
//! - [`transitions`]: the transitions applied, with what to announce.
//! - [`metrics`]: what is counted.

pub mod health;
pub mod metrics;
pub mod record;
pub mod room;
pub mod step;
pub mod transitions;

use std::time::Duration;

use spotkube_shared::fargate::FargateProfile;

pub use record::{FargateRecord, RolloutKind};
pub use step::Timeouts;

/// What failover and recovery need to know (`--fargate-*`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The profiles: which namespaces can fail over, and the labels that send pods there.
    pub profiles: Vec<FargateProfile>,
    /// How long a workload stays on Fargate before spot is tried again.
    pub cooldown: Duration,
    /// A failed recovery waits base × 2^failures before the next, at most `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub timeouts: Timeouts,
    /// How often the recovery loop looks.
    pub interval: Duration,
}

impl Settings {
    /// The profile a workload of `namespace` fails over to.
    pub fn profile_for(&self, namespace: &str) -> Option<&FargateProfile> {
        spotkube_shared::fargate::profile_for(&self.profiles, namespace)
    }
}
