//! The recovery loop's decisions for one Deployment spotkube moved to Fargate: follow
//! the rollout in flight to its verdict, or, with none, say whether spot may be tried.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use spotkube_shared::annotations::WorkloadState;

use super::record::{self, FargateRecord, RolloutKind};

/// How the rollout in flight stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `kubectl rollout status` would say done.
    pub rollout_done: bool,
    pub endpoints: Endpoints,
    /// Why Fargate does not start a pod of the workload (its scheduler's condition).
    pub fargate_failure: Option<String>,
}

/// The ready endpoints of the Services that select the workload's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// No Service selects the pods: judged by the rollout alone.
    NoService,
    /// The fewest ready endpoints over those Services, and how many are wanted.
    Ready { ready: usize, wanted: usize },
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.rollout_done
            && match self.endpoints {
                Endpoints::NoService => true,
                Endpoints::Ready { ready, wanted } => ready >= wanted,
            }
    }
}

/// How long each rollout may take before spotkube turns it around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub failover: Duration,
    pub recovery: Duration,
}

/// What to do with a rollout in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    /// Healthy: restore the strategy and close the transition.
    Complete,
    /// The failover cannot finish on Fargate: back to spot.
    Abort(String),
    /// The recovery did not become healthy in time: back to Fargate.
    Rollback(String),
}

pub fn judge(
    kind: RolloutKind,
    started: Timestamp,
    health: &Health,
    now: Timestamp,
    timeouts: Timeouts,
) -> Verdict {
    if health.healthy() {
        return Verdict::Complete;
    }
    let elapsed = now.duration_since(started);
    let over =
        |limit: Duration| elapsed >= SignedDuration::try_from(limit).unwrap_or(SignedDuration::MAX);
    match kind {
        RolloutKind::Failover => match &health.fargate_failure {
            Some(why) => Verdict::Abort(format!("Fargate cannot start it: {why}")),
            None if over(timeouts.failover) => Verdict::Abort(format!(
                "not healthy on Fargate within {}",
                humantime::format_duration(timeouts.failover)
            )),
            None => Verdict::Wait,
        },
        RolloutKind::Recovery if over(timeouts.recovery) => Verdict::Rollback(format!(
            "not healthy on spot within {}{}",
            humantime::format_duration(timeouts.recovery),
            match health.endpoints {
                Endpoints::Ready { ready, wanted } if health.rollout_done =>
                    format!(" ({ready} of {wanted} endpoints ready)"),
                _ => " (rollout not done)".to_string(),
            }
        )),
        // Back to where the workload was healthy: nothing to turn around to.
        RolloutKind::Recovery | RolloutKind::Rollback | RolloutKind::Abort => Verdict::Wait,
    }
}

/// What the loop does with a Deployment labelled as on Fargate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A rollout is in flight: judge it.
    Follow {
        kind: RolloutKind,
        started: Timestamp,
    },
    /// On Fargate and due: try spot if it has room.
    RecoveryDue,
    /// On Fargate, not yet due.
    NotBefore(Timestamp),
    /// Nothing of spotkube's to do (no record; a label left by a finished transition).
    Nothing,
}

pub fn next(
    d: &Deployment,
    record: Option<&FargateRecord>,
    now: Timestamp,
    cooldown: Duration,
) -> Next {
    let Some(record) = record else {
        return Next::Nothing;
    };
    if let Some(rollout) = &record.rollout {
        return Next::Follow {
            kind: rollout.kind,
            started: rollout.started,
        };
    }
    if record::state(d) != Some(WorkloadState::Fargate) {
        return Next::Nothing;
    }
    match record::recovery_due(d, cooldown) {
        Some(due) if due > now => Next::NotBefore(due),
        // A workload without migrated-at (set by hand) is due at once.
        _ => Next::RecoveryDue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        failover: Duration::from_secs(180),
        recovery: Duration::from_secs(300),
    };

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn health(done: bool, endpoints: Endpoints, failure: Option<&str>) -> Health {
        Health {
            rollout_done: done,
            endpoints,
            fargate_failure: failure.map(String::from),
        }
    }

    #[test]
    fn healthy_needs_the_rollout_done_and_enough_ready_endpoints() {
        assert!(health(true, Endpoints::NoService, None).healthy());
        assert!(
            health(
                true,
                Endpoints::Ready {
                    ready: 2,
                    wanted: 2
                },
                None
            )
            .healthy()
        );
        assert!(
            !health(
                true,
                Endpoints::Ready {
                    ready: 1,
                    wanted: 2
                },
                None
            )
            .healthy()
        );
        assert!(
            !health(
                false,
                Endpoints::Ready {
                    ready: 3,
                    wanted: 2
                },
                None
            )
            .healthy()
        );
    }

    #[test]
    fn a_failover_aborts_when_fargate_cannot_start_it_or_takes_too_long() {
        let start = at("2026-12-01T10:00:00Z");
        let pending = health(false, Endpoints::NoService, None);
        assert_eq!(
            judge(
                RolloutKind::Failover,
                start,
                &pending,
                at("2026-12-01T10:02:59Z"),
                T
            ),
            Verdict::Wait
        );
        assert!(matches!(
            judge(RolloutKind::Failover, start, &pending, at("2026-12-01T10:03:00Z"), T),
            Verdict::Abort(why) if why == "not healthy on Fargate within 3m"
        ));
        let refused = health(
            false,
            Endpoints::NoService,
            Some("Fargate capacity unavailable"),
        );
        assert!(matches!(
            judge(RolloutKind::Failover, start, &refused, start, T),
            Verdict::Abort(why) if why.ends_with("Fargate capacity unavailable")
        ));
        let done = health(
            true,
            Endpoints::Ready {
                ready: 1,
                wanted: 1,
            },
            None,
        );
        assert_eq!(
            judge(RolloutKind::Failover, start, &done, start, T),
            Verdict::Complete
        );
    }

    #[test]
    fn a_recovery_rolls_back_once_its_timeout_passes_and_rollbacks_only_wait() {
        let start = at("2026-12-01T10:00:00Z");
        let short = health(
            true,
            Endpoints::Ready {
                ready: 0,
                wanted: 1,
            },
            None,
        );
        assert_eq!(
            judge(
                RolloutKind::Recovery,
                start,
                &short,
                at("2026-12-01T10:04:59Z"),
                T
            ),
            Verdict::Wait
        );
        assert_eq!(
            judge(
                RolloutKind::Recovery,
                start,
                &short,
                at("2026-12-01T10:05:00Z"),
                T
            ),
            Verdict::Rollback("not healthy on spot within 5m (0 of 1 endpoints ready)".into())
        );
        let late = at("2026-12-01T11:00:00Z");
        assert_eq!(
            judge(RolloutKind::Rollback, start, &short, late, T),
            Verdict::Wait
        );
        assert_eq!(
            judge(RolloutKind::Abort, start, &short, late, T),
            Verdict::Wait
        );
    }
}
