//! EventBridge events the controller consumes, parsed into one typed [`SpotEvent`].
//!
//! Each event kind has its own parser module; [`registry`] maps EventBridge's
//! `(source, detail-type)` pair to the parser, so adding a kind is one module plus one
//! registry line. The instance id always comes from `detail` (never from the
//! `resources` ARNs, whose format varies), and `account` is optional because
//! EventBridge → SQS on moto omits it.

mod envelope;
mod health;
mod rebalance;
mod spot_interruption;
mod state_change;

use jiff::Timestamp;
use serde::Deserialize;

pub use envelope::Envelope;
pub use health::{HealthStatus, ScheduledChange};
pub use spot_interruption::InstanceAction;
pub use state_change::InstanceState;

/// How long EC2 gives between a spot interruption warning and the action.
pub const SPOT_WARNING_LEAD: std::time::Duration = std::time::Duration::from_secs(120);

/// One EventBridge event, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotEvent {
    pub envelope: Envelope,
    pub detail: EventDetail,
}

/// What an event says, per kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDetail {
    /// EC2 Spot Instance Interruption Warning: the instance goes at `deadline`.
    SpotInterruption {
        instance_id: String,
        action: InstanceAction,
        /// Event time + [`SPOT_WARNING_LEAD`].
        deadline: Timestamp,
    },
    /// EC2 Instance Rebalance Recommendation: elevated risk, no deadline.
    RebalanceRecommendation { instance_id: String },
    /// EC2 Instance State-change Notification.
    StateChange {
        instance_id: String,
        state: InstanceState,
    },
    /// AWS Health scheduled change for EC2 (retirement, maintenance).
    ScheduledChange(ScheduledChange),
}

/// The kind of an event, for metrics labels and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    SpotInterruption,
    RebalanceRecommendation,
    StateChange,
    ScheduledChange,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SpotInterruption => "spot-interruption",
            EventKind::RebalanceRecommendation => "rebalance-recommendation",
            EventKind::StateChange => "state-change",
            EventKind::ScheduledChange => "scheduled-change",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SpotEvent {
    pub fn kind(&self) -> EventKind {
        match &self.detail {
            EventDetail::SpotInterruption { .. } => EventKind::SpotInterruption,
            EventDetail::RebalanceRecommendation { .. } => EventKind::RebalanceRecommendation,
            EventDetail::StateChange { .. } => EventKind::StateChange,
            EventDetail::ScheduledChange(_) => EventKind::ScheduledChange,
        }
    }

    /// Every EC2 instance the event is about (one, except for Health events).
    pub fn instance_ids(&self) -> Vec<&str> {
        match &self.detail {
            EventDetail::SpotInterruption { instance_id, .. }
            | EventDetail::RebalanceRecommendation { instance_id }
            | EventDetail::StateChange { instance_id, .. } => vec![instance_id.as_str()],
            EventDetail::ScheduledChange(change) => {
                change.instance_ids.iter().map(String::as_str).collect()
            }
        }
    }

    /// The key under which redeliveries of the same event are recognised: the
    /// EventBridge id, except for Health events, which AWS may send twice (backup
    /// region) under different ids.
    pub fn dedupe_key(&self) -> String {
        match &self.detail {
            EventDetail::ScheduledChange(change) => change.dedupe_key(),
            _ => self.envelope.id.clone(),
        }
    }
}

/// Why a message is not a [`SpotEvent`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("message is not an EventBridge event: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unknown event kind: source {event_source:?}, detail-type {detail_type:?}")]
    Unknown {
        event_source: String,
        detail_type: String,
    },
    #[error("{detail_type} event has an invalid detail: {reason}")]
    InvalidDetail { detail_type: String, reason: String },
    /// A known kind that is not for spotkube (e.g. a Health event for another
    /// service): safe to drop.
    #[error("{detail_type} event is not relevant: {reason}")]
    Irrelevant { detail_type: String, reason: String },
}

impl ParseError {
    fn invalid(detail_type: &str, reason: impl std::fmt::Display) -> Self {
        ParseError::InvalidDetail {
            detail_type: detail_type.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A parser for one event kind: the envelope plus the raw `detail`.
pub type DetailParser = fn(&Envelope, serde_json::Value) -> Result<EventDetail, ParseError>;

/// The registry: `(source, detail-type)` → parser.
pub fn registry() -> &'static [(&'static str, &'static str, DetailParser)] {
    &[
        (
            spot_interruption::SOURCE,
            spot_interruption::DETAIL_TYPE,
            spot_interruption::parse,
        ),
        (rebalance::SOURCE, rebalance::DETAIL_TYPE, rebalance::parse),
        (
            state_change::SOURCE,
            state_change::DETAIL_TYPE,
            state_change::parse,
        ),
        (health::SOURCE, health::DETAIL_TYPE, health::parse),
    ]
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(flatten)]
    envelope: Envelope,
    #[serde(default)]
    detail: serde_json::Value,
}

/// Parses an SQS message body (the EventBridge event itself).
pub fn parse(body: &str) -> Result<SpotEvent, ParseError> {
    let raw: RawEvent = serde_json::from_str(body).map_err(ParseError::Malformed)?;
    let envelope = raw.envelope;
    let parser = registry()
        .iter()
        .find(|(source, detail_type, _)| {
            *source == envelope.source && *detail_type == envelope.detail_type
        })
        .map(|(_, _, parser)| *parser)
        .ok_or_else(|| ParseError::Unknown {
            event_source: envelope.source.clone(),
            detail_type: envelope.detail_type.clone(),
        })?;
    let detail = parser(&envelope, raw.detail)?;
    Ok(SpotEvent { envelope, detail })
}

/// Deserializes `detail` into a kind's own struct, naming the kind on failure.
fn detail_as<T: serde::de::DeserializeOwned>(
    envelope: &Envelope,
    detail: serde_json::Value,
) -> Result<T, ParseError> {
    serde_json::from_value(detail).map_err(|e| ParseError::invalid(&envelope.detail_type, e))
}

/// EC2 instance ids look like `i-` followed by 8 or 17 hex digits.
fn valid_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn checked_instance_id(envelope: &Envelope, id: String) -> Result<String, ParseError> {
    if valid_instance_id(&id) {
        Ok(id)
    } else {
        Err(ParseError::invalid(
            &envelope.detail_type,
            format!("{id:?} is not an EC2 instance id"),
        ))
    }
}

#[cfg(test)]
mod tests;
