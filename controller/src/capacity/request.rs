//! A Node's capacity request: what spotkube asked Auto Scaling for on the Node's behalf
//! and how far it got, kept in the Node's `spotkube.io/capacity-request` annotation so a
//! restarted or newly elected leader finishes the same plan instead of asking twice.
//!
//! The phases, in order (the capacity reconcile moves a request along; see
//! [`crate::reconcile::capacity`]):
//!
//! - `wanted`: an event called for a replacement; nothing asked yet.
//! - `requesting`: the group's desired capacity `from` was read and one more is being
//!   asked for. A leader that finds this phase checks the group before asking again.
//! - `requested`: the group was raised to `to` at `requestedAt`; waiting for a Ready
//!   Node of a new instance (or a capacity error, or the timeout: then the fallback).
//! - `ready`: `replacement` is Ready; the drain begins when the drain limit allows.
//! - `draining`: tainted, cordoned, its workloads surged and evicted.
//! - `terminated`: drained and terminated through its group with the group's desired
//!   capacity lowered. The Node goes with its instance.
//! - `unavailable`: no capacity could be had (group at MaxSize with no fallback, every
//!   side out of capacity); the Node stays `PreferNoSchedule` until an interruption
//!   follows or the rebalance expiry passes.
//! - `no-pool`: the Node is in no spotkube pool; its provisioner brings capacity.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use spotkube_shared::annotations::CAPACITY_REQUEST;

/// Where a request is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Wanted,
    Requesting,
    Requested,
    Ready,
    Draining,
    Terminated,
    Unavailable,
    NoPool,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Wanted => "wanted",
            Phase::Requesting => "requesting",
            Phase::Requested => "requested",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Terminated => "terminated",
            Phase::Unavailable => "unavailable",
            Phase::NoPool => "no-pool",
        }
    }

    /// Phases in which capacity has been asked for and not yet delivered.
    pub fn is_pending(self) -> bool {
        matches!(self, Phase::Wanted | Phase::Requesting | Phase::Requested)
    }
}

/// What called for the replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// A rebalance recommendation: no deadline; the Node is drained only once its
    /// replacement is Ready, a limited number at a time.
    Rebalance,
    /// A spot interruption warning: the Node is drained at once; the replacement is
    /// asked for in parallel and the Node is terminated before AWS reclaims it.
    Interruption,
    /// An on-demand fallback Node whose pool's spot group is back: no replacement to
    /// ask for, only the drain and the termination.
    ScaleBack,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Rebalance => "rebalance",
            Trigger::Interruption => "interruption",
            Trigger::ScaleBack => "scale-back",
        }
    }
}

/// The annotation's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityRequest {
    pub phase: Phase,
    pub trigger: Trigger,
    /// When the current phase began.
    pub since: Timestamp,
    /// The interruption's deadline (when the instance goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The Auto Scaling group asked for one more instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A launch-template pool's request (no group): the template the replacement was
    /// launched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<String>,
    /// `group` is the pool's on-demand fallback (or, for a launch-template pool, the
    /// replacement was launched on-demand).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
    /// The group's desired capacity before the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i32>,
    /// The desired capacity asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Timestamp>,
    /// The new instance paired with this Node, and its Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_node: Option<String>,
    /// Why the request is where it is (a capacity error, the group at MaxSize, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A `spotkube.io/capacity-request` annotation that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("annotation {CAPACITY_REQUEST}: {0}")]
pub struct InvalidRequest(#[from] serde_json::Error);

/// How long an interruption's request may wait for a Ready replacement: what the
/// deadline leaves, less this margin for the drain.
pub const INTERRUPTION_MARGIN: Duration = Duration::from_secs(30);
/// The least any request waits before falling back.
const MIN_WAIT: Duration = Duration::from_secs(10);

impl CapacityRequest {
    /// A new request in phase `wanted`.
    pub fn wanted(trigger: Trigger, deadline: Option<Timestamp>, now: Timestamp) -> Self {
        CapacityRequest {
            phase: Phase::Wanted,
            trigger,
            since: now,
            deadline,
            pool: None,
            group: None,
            launch_template: None,
            fallback: false,
            from: None,
            to: None,
            requested_at: None,
            replacement: None,
            replacement_node: None,
            message: None,
        }
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("capacity request serializes")
    }

    pub fn from_annotation(value: &str) -> Result<Self, InvalidRequest> {
        Ok(serde_json::from_str(value)?)
    }

    /// The same request moved to `phase` at `now`.
    pub fn enter(&self, phase: Phase, now: Timestamp) -> Self {
        CapacityRequest {
            phase,
            since: now,
            ..self.clone()
        }
    }

    /// How long the request may wait for a Ready replacement before falling back:
    /// `timeout` after a rebalance; after an interruption warning, what its deadline
    /// leaves less [`INTERRUPTION_MARGIN`] (never more than `timeout`).
    pub fn wait_limit(&self, timeout: Duration) -> Duration {
        let (Trigger::Interruption, Some(deadline), Some(at)) =
            (self.trigger, self.deadline, self.requested_at)
        else {
            return timeout;
        };
        let left = deadline
            .duration_since(at)
            .checked_sub(SignedDuration::try_from(INTERRUPTION_MARGIN).unwrap_or_default())
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        left.clamp(MIN_WAIT, timeout.max(MIN_WAIT))
    }

    /// Whether the wait for a replacement is over at `now`.
    pub fn timed_out(&self, timeout: Duration, now: Timestamp) -> bool {
        let Some(at) = self.requested_at else {
            return false;
        };
        let waited = Duration::try_from(now.duration_since(at)).unwrap_or_default();
        waited >= self.wait_limit(timeout)
    }

    /// Whether a request left `unavailable` by a rebalance has passed its expiry: the
    /// Node's mark and taint then go (no interruption followed).
    pub fn expired(&self, expiry: Duration, now: Timestamp) -> bool {
        self.phase == Phase::Unavailable
            && self.trigger == Trigger::Rebalance
            && Duration::try_from(now.duration_since(self.since)).unwrap_or_default() >= expiry
    }

    /// Whether an interruption's Node must be terminated now whatever remains on it:
    /// AWS reclaims it at the deadline, and a group that sees it go without a decrement
    /// launches a second replacement.
    pub fn must_terminate(&self, now: Timestamp) -> bool {
        self.deadline
            .is_some_and(|deadline| now >= deadline - SignedDuration::from_secs(20))
    }
}

/// What a new event with `trigger` (and the interruption's `deadline`) makes of the
/// Node's current request; `None`: keep it as it is.
/// - No request yet: a new one.
/// - An interruption after a rebalance whose request ended without capacity: a new one
///   (capacity may be had now).
/// - An interruption after a rebalance whose request is under way: the same request,
///   now held to the interruption's deadline (its Node is terminated with decrement
///   before AWS reclaims it, so the group does not replace it a second time).
pub fn after_event(
    current: Option<&CapacityRequest>,
    trigger: Trigger,
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> Option<CapacityRequest> {
    let Some(request) = current else {
        return Some(CapacityRequest::wanted(trigger, deadline, now));
    };
    if trigger != Trigger::Interruption || request.trigger != Trigger::Rebalance {
        return None;
    }
    match request.phase {
        Phase::Unavailable => Some(CapacityRequest::wanted(trigger, deadline, now)),
        Phase::Terminated | Phase::NoPool => None,
        _ => Some(CapacityRequest {
            trigger,
            deadline,
            ..request.clone()
        }),
    }
}

/// The first launched instance no other request has claimed, among `launched` (newest
/// first), for which `ready_node` finds a Ready Node.
pub fn pick_replacement<'a, F>(
    launched: &'a [String],
    claimed: &std::collections::HashSet<String>,
    mut ready_node: F,
) -> Option<(&'a str, String)>
where
    F: FnMut(&str) -> Option<String>,
{
    // Oldest first: the instance launched for the earliest request pairs first.
    launched
        .iter()
        .rev()
        .filter(|i| !claimed.contains(i.as_str()))
        .find_map(|i| ready_node(i).map(|node| (i.as_str(), node)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_annotation_round_trips_and_leaves_out_what_is_unset() {
        let now = at("2026-12-01T10:00:00Z");
        let mut request = CapacityRequest::wanted(Trigger::Rebalance, None, now);
        assert_eq!(
            request.to_annotation(),
            r#"{"phase":"wanted","trigger":"rebalance","since":"2026-12-01T10:00:00Z"}"#
        );
        request = request.enter(Phase::Requested, now);
        request.group = Some("spot-a".into());
        request.fallback = true;
        request.from = Some(3);
        request.to = Some(4);
        request.requested_at = Some(now);
        let text = request.to_annotation();
        assert!(text.contains(r#""phase":"requested""#), "{text}");
        assert!(
            text.contains(r#""requestedAt":"2026-12-01T10:00:00Z""#),
            "{text}"
        );
        assert_eq!(CapacityRequest::from_annotation(&text).unwrap(), request);
        assert!(CapacityRequest::from_annotation(r#"{"phase":"later"}"#).is_err());
    }

    #[test]
    fn a_rebalance_waits_the_timeout_and_an_interruption_what_its_deadline_leaves() {
        let at0 = at("2026-12-01T10:00:00Z");
        let timeout = Duration::from_secs(240);
        let mut rebalance = CapacityRequest::wanted(Trigger::Rebalance, None, at0);
        rebalance.requested_at = Some(at0);
        assert_eq!(rebalance.wait_limit(timeout), timeout);
        assert!(!rebalance.timed_out(timeout, at("2026-12-01T10:03:59Z")));
        assert!(rebalance.timed_out(timeout, at("2026-12-01T10:04:00Z")));

        let mut warning =
            CapacityRequest::wanted(Trigger::Interruption, Some(at("2026-12-01T10:02:00Z")), at0);
        warning.requested_at = Some(at("2026-12-01T10:00:01Z"));
        assert_eq!(warning.wait_limit(timeout), Duration::from_secs(89));
        // A request made with the deadline nearly gone still waits a little.
        warning.requested_at = Some(at("2026-12-01T10:01:50Z"));
        assert_eq!(warning.wait_limit(timeout), MIN_WAIT);
        // Never longer than the configured timeout.
        warning.requested_at = Some(at0);
        assert_eq!(
            warning.wait_limit(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        // Not requested yet: no timeout runs.
        warning.requested_at = None;
        assert!(!warning.timed_out(timeout, at("2026-12-01T11:00:00Z")));
    }

    #[test]
    fn only_an_unavailable_rebalance_expires() {
        let at0 = at("2026-12-01T10:00:00Z");
        let expiry = Duration::from_secs(1800);
        let later = at("2026-12-01T10:30:00Z");
        let unavailable =
            CapacityRequest::wanted(Trigger::Rebalance, None, at0).enter(Phase::Unavailable, at0);
        assert!(unavailable.expired(expiry, later));
        assert!(!unavailable.expired(expiry, at("2026-12-01T10:29:59Z")));
        let requested = unavailable.enter(Phase::Requested, at0);
        assert!(!requested.expired(expiry, later));
        let warning = CapacityRequest {
            trigger: Trigger::Interruption,
            ..unavailable
        };
        assert!(!warning.expired(expiry, later));
    }

    #[test]
    fn an_interruption_node_is_terminated_in_the_last_20_seconds() {
        let at0 = at("2026-12-01T10:00:00Z");
        let warning =
            CapacityRequest::wanted(Trigger::Interruption, Some(at("2026-12-01T10:02:00Z")), at0);
        assert!(!warning.must_terminate(at("2026-12-01T10:01:39Z")));
        assert!(warning.must_terminate(at("2026-12-01T10:01:40Z")));
        let rebalance = CapacityRequest::wanted(Trigger::Rebalance, None, at0);
        assert!(!rebalance.must_terminate(at("2027-01-01T00:00:00Z")));
    }

    #[test]
    fn a_warning_renews_an_unavailable_rebalance_and_holds_one_under_way_to_its_deadline() {
        let at0 = at("2026-12-01T10:00:00Z");
        let later = at("2026-12-01T10:05:00Z");
        let deadline = Some(at("2026-12-01T10:07:00Z"));
        let fresh = after_event(None, Trigger::Rebalance, None, at0).unwrap();
        assert_eq!(
            fresh,
            CapacityRequest::wanted(Trigger::Rebalance, None, at0)
        );
        let requested = fresh.enter(Phase::Requested, at0);
        // Another rebalance, or a second warning, changes nothing.
        assert_eq!(
            after_event(Some(&requested), Trigger::Rebalance, None, later),
            None
        );
        // A warning keeps the phase (nothing asked twice) and takes the deadline.
        let held = after_event(Some(&requested), Trigger::Interruption, deadline, later).unwrap();
        assert_eq!((held.phase, held.since), (Phase::Requested, at0));
        assert_eq!(
            (held.trigger, held.deadline),
            (Trigger::Interruption, deadline)
        );
        assert_eq!(
            after_event(Some(&held), Trigger::Interruption, deadline, later),
            None
        );
        // Without capacity: asked again from the start.
        let unavailable = requested.enter(Phase::Unavailable, at0);
        let renewed =
            after_event(Some(&unavailable), Trigger::Interruption, deadline, later).unwrap();
        assert_eq!(
            renewed,
            CapacityRequest::wanted(Trigger::Interruption, deadline, later)
        );
        // Over, or no pool: left alone.
        for phase in [Phase::Terminated, Phase::NoPool] {
            let done = requested.enter(phase, at0);
            assert_eq!(
                after_event(Some(&done), Trigger::Interruption, deadline, later),
                None
            );
        }
    }

    #[test]
    fn each_launched_instance_pairs_with_one_node_oldest_first() {
        let launched = vec!["i-new".to_string(), "i-mid".into(), "i-old".into()];
        let ready = |i: &str| (i != "i-mid").then(|| format!("node-{i}"));
        let none = HashSet::new();
        assert_eq!(
            pick_replacement(&launched, &none, ready),
            Some(("i-old", "node-i-old".to_string()))
        );
        let claimed: HashSet<String> = ["i-old".to_string()].into();
        // i-mid is not Ready yet: the next unclaimed Ready one.
        assert_eq!(
            pick_replacement(&launched, &claimed, ready),
            Some(("i-new", "node-i-new".to_string()))
        );
        let all: HashSet<String> = ["i-old".to_string(), "i-new".into()].into();
        assert_eq!(pick_replacement(&launched, &all, ready), None);
    }
}
