//! The user-facing contract: every `spotkube.io/` annotation key, its typed values and
//! their parsing. Users write the policy keys on Namespaces, workloads and Pods; the
//! keys under "written by spotkube" are read by users, never written by them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The prefix of every spotkube key.
pub const PREFIX: &str = "spotkube.io/";

// Policy keys (Namespace defaults, workload / pod template overrides, Pod).
pub const ENABLED: &str = "spotkube.io/enabled";
pub const CAPACITY: &str = "spotkube.io/capacity";
pub const FALLBACK: &str = "spotkube.io/fallback";
pub const SURGE: &str = "spotkube.io/surge";
pub const SURGE_HOLD: &str = "spotkube.io/surge-hold";
pub const SPREAD: &str = "spotkube.io/spread";

// Written by spotkube on Pods.
pub const PROTECTION: &str = "spotkube.io/protection";
pub const MUTATED_BY: &str = "spotkube.io/mutated-by";

// Written by spotkube on Nodes (annotation and taint share the key).
pub const INTERRUPTION: &str = "spotkube.io/interruption";
/// The taint key on Nodes under interruption (`NoSchedule`) or rebalance
/// recommendation (`PreferNoSchedule`).
pub const INTERRUPTION_TAINT: &str = "spotkube.io/interruption";

/// Written by spotkube on a Node it brings replacement capacity for: the capacity
/// request's progress (JSON), so a restarted leader finishes the same plan.
pub const CAPACITY_REQUEST: &str = "spotkube.io/capacity-request";
/// Written by spotkube on an on-demand Node it launched because its pool's spot group
/// could not: the pool's name. Such a Node is drained and removed once spot is back.
pub const FALLBACK_FOR: &str = "spotkube.io/fallback-for";

// Written by spotkube on workloads.
pub const STATE: &str = "spotkube.io/state";
pub const MIGRATED_AT: &str = "spotkube.io/migrated-at";
pub const REASON: &str = "spotkube.io/reason";
pub const SURGE_FROM: &str = "spotkube.io/surge-from";
pub const SURGE_UNTIL: &str = "spotkube.io/surge-until";
/// The Node a scaled surge was made for: once that Node is gone, the surge ends
/// (whatever its hold), so the workload is back to the replicas its owner asked for.
pub const SURGE_NODE: &str = "spotkube.io/surge-node";
pub const FAILED_RECOVERIES: &str = "spotkube.io/failed-recoveries";
/// When the next recovery to spot of a workload on Fargate may start (after a failed
/// one: base × 2^failures).
pub const NEXT_RECOVERY: &str = "spotkube.io/next-recovery";
/// A workload spotkube moved to Fargate (JSON, see the controller's
/// `fargate::FargateRecord`): the profile labels it added to the pod template, what the
/// template had under those keys before, and the rollout in flight with the strategy to
/// restore after it, so a restarted leader finishes the same transition.
pub const FARGATE_RECORD: &str = "spotkube.io/fargate";

// Policy keys read by the controller only (workload metadata).
/// How long a workload stays on Fargate before spotkube tries spot again (a duration;
/// overrides `--fargate-cooldown`).
pub const FARGATE_COOLDOWN: &str = "spotkube.io/fargate-cooldown";

/// The default `surge-hold`.
pub const DEFAULT_SURGE_HOLD: Duration = Duration::from_secs(5 * 60);

/// A value that does not belong to a key's value set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {value:?} is not one of {expected}")]
pub struct InvalidValue {
    pub key: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Declares a string-valued enum with its wire names, `FromStr` (typed error naming the
/// key) and `Display`: the value sets of the contract, kept in one place each.
macro_rules! annotation_enum {
    ($(#[$meta:meta])* $name:ident, key = $key:expr, { $($(#[$vmeta:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The annotation key whose values these are.
            pub const KEY: &'static str = $key;

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim() {
                    $($wire => Ok($name::$variant),)+
                    other => Err(InvalidValue {
                        key: $key,
                        value: other.to_string(),
                        expected: concat!($($wire, " "),+),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

annotation_enum!(
    /// `spotkube.io/capacity`: how strongly a workload wants spot nodes.
    Capacity, key = CAPACITY, {
        /// Preferred spot node affinity (the default).
        SpotPreferred = "spot-preferred",
        /// Required spot node affinity.
        SpotOnly = "spot-only",
        /// No spot affinity; the extender keeps it off spot nodes.
        OnDemand = "on-demand",
        /// On Fargate from the start: the namespace's Fargate profile labels are added
        /// at admission and nothing spot.
        Fargate = "fargate",
    }
);

annotation_enum!(
    /// `spotkube.io/fallback`: where a workload goes when spot cannot take it.
    Fallback, key = FALLBACK, {
        Fargate = "fargate",
        OnDemand = "on-demand",
        None = "none",
    }
);

annotation_enum!(
    /// `spotkube.io/surge`: how a single-replica workload gets its replacement Ready
    /// before the old pod dies.
    Surge, key = SURGE, {
        /// `restart` when the rollout strategy surges, else `scale` (the default).
        Auto = "auto",
        Restart = "restart",
        Scale = "scale",
        Off = "off",
    }
);

annotation_enum!(
    /// `spotkube.io/spread`: topology spread injected for multi-replica workloads.
    Spread, key = SPREAD, {
        Zones = "zones",
        CapacityTypes = "capacity-types",
        None = "none",
    }
);

annotation_enum!(
    /// `spotkube.io/state` on workloads.
    WorkloadState, key = STATE, {
        Spot = "spot",
        Surging = "surging",
        Fargate = "fargate",
        Recovering = "recovering",
    }
);

annotation_enum!(
    /// What a Node's `spotkube.io/interruption` notice is about.
    InterruptionKind, key = INTERRUPTION, {
        /// EC2 Spot Instance Interruption Warning: about two minutes left.
        SpotInterruption = "spot-interruption",
        /// EC2 Instance Rebalance Recommendation: elevated risk, no deadline.
        RebalanceRecommendation = "rebalance-recommendation",
        /// AWS Health scheduled change (retirement, maintenance).
        ScheduledChange = "scheduled-change",
        /// spotkube is replacing the node: its replacement is Ready (after a rebalance
        /// recommendation), or it is an on-demand fallback node whose spot pool is back.
        Replacement = "replacement",
    }
);

/// `spotkube.io/enabled`: `"true"` / `"false"` (anything else is invalid).
pub fn parse_enabled(value: &str) -> Result<bool, InvalidValue> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(InvalidValue {
            key: ENABLED,
            value: other.to_string(),
            expected: "true false",
        }),
    }
}

/// `spotkube.io/surge-hold`: a humantime duration such as `5m` or `90s`.
pub fn parse_duration(key: &'static str, value: &str) -> Result<Duration, InvalidValue> {
    humantime::parse_duration(value.trim()).map_err(|_| InvalidValue {
        key,
        value: value.to_string(),
        expected: "a duration such as 90s, 5m or 1h",
    })
}

/// The value of a Node's `spotkube.io/interruption` annotation: what is coming and by
/// when. Stored as compact JSON so both the extender and an operator can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptionNotice {
    pub kind: InterruptionKind,
    /// When the instance goes away (spot interruption: event time + 120 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// The key of the event workloads on this node are surged under: the first
    /// imminent event's (a later event keeps it, so nothing surges twice for one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// A planned change (AWS Health): the time the imminent treatment (cordon, surge,
    /// evict, filter) begins. Until then the node is only `PreferNoSchedule`; absent
    /// once the drain has begun, and for every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_from: Option<Timestamp>,
    /// What told spotkube: absent for its own EventBridge events (SQS); else the tool
    /// whose mark on the Node it read (`nth`, `cluster-autoscaler`, `karpenter`,
    /// `unreachable`, `cordon`). A later event keeps the first signal's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A `spotkube.io/interruption` annotation that is not an [`InterruptionNotice`].
#[derive(Debug, thiserror::Error)]
#[error("annotation {INTERRUPTION}: {0}")]
pub struct InvalidNotice(#[from] serde_json::Error);

impl InterruptionNotice {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("notice serializes")
    }

    pub fn from_annotation(value: &str) -> Result<Self, InvalidNotice> {
        Ok(serde_json::from_str(value)?)
    }

    /// Whether the node is about to disappear (not merely at elevated risk, and not a
    /// planned change whose drain has not begun).
    pub fn is_imminent(&self) -> bool {
        match self.kind {
            InterruptionKind::SpotInterruption => true,
            InterruptionKind::RebalanceRecommendation => false,
            InterruptionKind::ScheduledChange => self.drain_from.is_none(),
            InterruptionKind::Replacement => true,
        }
    }

    /// Whether this is a planned change whose drain should have begun by `now`.
    pub fn drain_due(&self, now: Timestamp) -> bool {
        self.drain_from.is_some_and(|from| from <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_their_wire_names() {
        for c in Capacity::ALL {
            assert_eq!(c.as_str().parse::<Capacity>().unwrap(), *c);
        }
        assert_eq!("spot-only".parse::<Capacity>().unwrap(), Capacity::SpotOnly);
        assert_eq!(" scale ".parse::<Surge>().unwrap(), Surge::Scale);
        assert_eq!(Spread::CapacityTypes.to_string(), "capacity-types");
    }

    #[test]
    fn unknown_values_name_key_and_choices() {
        let err = "spot-maybe".parse::<Capacity>().unwrap_err();
        assert_eq!(err.key, CAPACITY);
        assert_eq!(
            err.to_string(),
            "annotation spotkube.io/capacity: \"spot-maybe\" is not one of spot-preferred spot-only on-demand fargate "
        );
        assert!(parse_enabled("yes").is_err());
        assert!(parse_enabled("true").unwrap());
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(
            parse_duration(SURGE_HOLD, "5m").unwrap(),
            Duration::from_secs(300)
        );
        assert!(parse_duration(SURGE_HOLD, "soon").is_err());
    }

    #[test]
    fn interruption_notice_round_trips() {
        let notice = InterruptionNotice {
            kind: InterruptionKind::SpotInterruption,
            deadline: Some("2026-11-22T10:02:00Z".parse().unwrap()),
            event_id: Some("abc".into()),
            drain_from: None,
            source: None,
        };
        let text = notice.to_annotation();
        assert_eq!(
            text,
            r#"{"kind":"spot-interruption","deadline":"2026-11-22T10:02:00Z","event_id":"abc"}"#
        );
        assert_eq!(InterruptionNotice::from_annotation(&text).unwrap(), notice);
        assert!(notice.is_imminent());
        assert!(InterruptionNotice::from_annotation("soon").is_err());
    }

    #[test]
    fn a_planned_change_is_imminent_only_once_its_drain_began() {
        let start: Timestamp = "2026-11-28T13:19:03Z".parse().unwrap();
        let from: Timestamp = "2026-11-28T13:04:03Z".parse().unwrap();
        let planned = InterruptionNotice {
            kind: InterruptionKind::ScheduledChange,
            deadline: Some(start),
            event_id: Some("c/1".into()),
            drain_from: Some(from),
            source: None,
        };
        assert!(!planned.is_imminent());
        assert!(!planned.drain_due("2026-11-28T13:04:02Z".parse().unwrap()));
        assert!(planned.drain_due(from));
        let draining = InterruptionNotice {
            drain_from: None,
            ..planned
        };
        assert!(draining.is_imminent());
        assert!(!draining.drain_due(start));
    }
}
