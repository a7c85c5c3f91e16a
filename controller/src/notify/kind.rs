//! What a notification is about, from the Kubernetes Event it mirrors.

use kube::runtime::events::EventType;

/// The kinds a receiver can filter on (`kind` in the generic payload). A new behaviour
/// slots in as a variant here and its Event reasons as a row in [`Kind::of_event`]: the
/// payloads, dedup and rate limits are the same for every kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A Node marked for an interruption (spot warning, rebalance, scheduled change).
    Interruption,
    /// spotkube's marks removed from a Node (the instance stays, or is gone).
    InterruptionCleared,
    /// A single-replica workload surged: rollout restart or scale up.
    SurgeStarted,
    /// A surge's replacement is Ready: the workload no longer depends on the Node.
    SurgeFinished,
    /// A scaled surge's hold is over and its replicas went back.
    SurgeScaledBack,
    /// A pod evicted from a Node being drained.
    Evicted,
    /// Replacement capacity could not come from a pool's spot group: asked of its
    /// on-demand fallback, none at all, or the group at MaxSize; and the fallback's end.
    CapacityFallback,
    /// A workload moved to Fargate, or its failover abandoned for spot.
    FargateFailover,
    /// A workload's way back to spot: started, done, or rolled back to Fargate.
    FargateRecovery,
    /// An action failed (it is retried), or something spotkube relies on is down.
    Failure,
}

impl Kind {
    /// The kind an Event of `reason` notifies as; `None`: it does not notify.
    pub fn of_event(type_: EventType, reason: &str) -> Option<Kind> {
        match reason {
            "SpotInterruption" => Some(Kind::Interruption),
            "InterruptionCleared" => Some(Kind::InterruptionCleared),
            "SurgeRestart" | "SurgeScale" => Some(Kind::SurgeStarted),
            "ReplacementReady" => Some(Kind::SurgeFinished),
            "SurgeEnded" => Some(Kind::SurgeScaledBack),
            "Evicted" => Some(Kind::Evicted),
            "SpotkubeCapacityFallback"
            | "SpotkubeCapacityUnavailable"
            | "SpotkubeCapacityCapped"
            // The on-demand fallback ends: the cost the fallback notification announced.
            | "SpotkubeFallbackScaleBack" => Some(Kind::CapacityFallback),
            // The node's marks and taint go, as when an interruption is cleared.
            "SpotkubeRebalanceExpired" => Some(Kind::InterruptionCleared),
            // A replacement going as planned: its steps follow the interruption already
            // notified, and would spend the sinks' rate limit on what needs no one. A
            // node of no pool is the expected case beside Karpenter.
            "SpotkubeCapacityRequested"
            | "SpotkubeReplacementReady"
            | "SpotkubeNodeTerminated"
            | "SpotkubeNoCapacityPool"
            | "SpotkubePendingScaleUp" => None,
            "SpotkubeFargateFailover"
            | "SpotkubeFargateReady"
            | "SpotkubeFargateFailoverFailed"
            | "SpotkubeFailoverAbortedReady"
            | "SpotkubeFargateNotCovered" => Some(Kind::FargateFailover),
            "SpotkubeRecoveryStarted"
            | "SpotkubeRecovered"
            | "SpotkubeRecoveryFailed"
            | "SpotkubeRollbackReady" => Some(Kind::FargateRecovery),
            "SpotkubeActionFailed" | "SchedulerUnavailable" => Some(Kind::Failure),
            // A Warning is always someone's problem: one added later without a row
            // here still reaches the operator, as a failure.
            _ if type_ == EventType::Warning => Some(Kind::Failure),
            _ => None,
        }
    }

    /// The `kind` of the generic payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Interruption => "interruption",
            Kind::InterruptionCleared => "interruption_cleared",
            Kind::SurgeStarted => "surge_started",
            Kind::SurgeFinished => "surge_finished",
            Kind::SurgeScaledBack => "surge_scaled_back",
            Kind::Evicted => "evicted",
            Kind::CapacityFallback => "capacity_fallback",
            Kind::FargateFailover => "fargate_failover",
            Kind::FargateRecovery => "fargate_recovery",
            Kind::Failure => "failure",
        }
    }

    /// The headline of a chat message.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Interruption => ":rotating_light: Spot interruption",
            Kind::InterruptionCleared => ":white_check_mark: Interruption cleared",
            Kind::SurgeStarted => ":arrows_counterclockwise: Surge started",
            Kind::SurgeFinished => ":white_check_mark: Surge finished",
            Kind::SurgeScaledBack => ":arrow_down: Surge scaled back",
            Kind::Evicted => ":outbox_tray: Pod evicted",
            Kind::CapacityFallback => ":warning: Capacity fallback",
            Kind::FargateFailover => ":cloud: Fargate failover",
            Kind::FargateRecovery => ":leftwards_arrow_with_hook: Recovery to spot",
            Kind::Failure => ":x: spotkube action failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_spotkube_records_maps_to_its_kind() {
        use EventType::{Normal, Warning};
        let cases = [
            (Warning, "SpotInterruption", Some(Kind::Interruption)),
            (
                Normal,
                "InterruptionCleared",
                Some(Kind::InterruptionCleared),
            ),
            (Normal, "SurgeRestart", Some(Kind::SurgeStarted)),
            (Normal, "SurgeScale", Some(Kind::SurgeStarted)),
            (Normal, "ReplacementReady", Some(Kind::SurgeFinished)),
            (Normal, "SurgeEnded", Some(Kind::SurgeScaledBack)),
            (Normal, "Evicted", Some(Kind::Evicted)),
            (Warning, "SpotkubeActionFailed", Some(Kind::Failure)),
            (Warning, "SchedulerUnavailable", Some(Kind::Failure)),
            (
                Warning,
                "SpotkubeCapacityFallback",
                Some(Kind::CapacityFallback),
            ),
            (
                Warning,
                "SpotkubeCapacityUnavailable",
                Some(Kind::CapacityFallback),
            ),
            (
                Warning,
                "SpotkubeCapacityCapped",
                Some(Kind::CapacityFallback),
            ),
            (
                Normal,
                "SpotkubeFallbackScaleBack",
                Some(Kind::CapacityFallback),
            ),
            (
                Normal,
                "SpotkubeRebalanceExpired",
                Some(Kind::InterruptionCleared),
            ),
            (
                Normal,
                "SpotkubeFargateFailover",
                Some(Kind::FargateFailover),
            ),
            (Normal, "SpotkubeFargateReady", Some(Kind::FargateFailover)),
            (
                Warning,
                "SpotkubeFargateFailoverFailed",
                Some(Kind::FargateFailover),
            ),
            (
                Normal,
                "SpotkubeFailoverAbortedReady",
                Some(Kind::FargateFailover),
            ),
            (
                Warning,
                "SpotkubeFargateNotCovered",
                Some(Kind::FargateFailover),
            ),
            (
                Normal,
                "SpotkubeRecoveryStarted",
                Some(Kind::FargateRecovery),
            ),
            (Normal, "SpotkubeRecovered", Some(Kind::FargateRecovery)),
            (
                Warning,
                "SpotkubeRecoveryFailed",
                Some(Kind::FargateRecovery),
            ),
            (Normal, "SpotkubeRollbackReady", Some(Kind::FargateRecovery)),
            (Normal, "SpotkubeCapacityRequested", None),
            (Normal, "SpotkubeReplacementReady", None),
            (Normal, "SpotkubeNodeTerminated", None),
            (Normal, "SpotkubeNoCapacityPool", None),
            (Normal, "SpotkubePendingScaleUp", None),
            (Warning, "SpotkubePodUnschedulable", Some(Kind::Failure)),
            (Warning, "SomethingNewAndBad", Some(Kind::Failure)),
            (Normal, "SomethingNewAndFine", None),
        ];
        for (type_, reason, kind) in cases {
            assert_eq!(Kind::of_event(type_, reason), kind, "{reason}");
        }
    }

    #[test]
    fn the_capacity_fallback_kind_has_its_payload_name_and_title() {
        assert_eq!(Kind::CapacityFallback.as_str(), "capacity_fallback");
        assert!(
            Kind::CapacityFallback.title().contains("Capacity fallback"),
            "{}",
            Kind::CapacityFallback.title()
        );
    }
}
