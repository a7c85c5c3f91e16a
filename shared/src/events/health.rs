//! AWS Health scheduled change for EC2 (instance retirement, maintenance).
//!
//! Times are RFC 1123 (`Sat, 28 Nov 2026 13:19:03 GMT`), entities are bare instance
//! ids or instance ARNs, and the same communication may arrive twice (backup region)
//! or in pages: the dedupe key is `communicationId` + `affectedAccount`.

use jiff::Timestamp;
use serde::Deserialize;

use super::{Envelope, EventDetail, ParseError, detail_as, valid_instance_id};

pub const SOURCE: &str = "aws.health";
pub const DETAIL_TYPE: &str = "AWS Health Event";

/// A scheduled change to EC2 instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledChange {
    pub event_type_code: String,
    pub communication_id: String,
    pub affected_account: Option<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    /// `closed` once the change is over or was cancelled: marks for it can go.
    pub status: HealthStatus,
    /// The affected instances (entities that are not instances are skipped).
    pub instance_ids: Vec<String>,
}

impl ScheduledChange {
    pub fn dedupe_key(&self) -> String {
        format!(
            "{}/{}",
            self.communication_id,
            self.affected_account.as_deref().unwrap_or("-")
        )
    }
}

/// The Health event's `statusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Upcoming,
    #[default]
    Open,
    Closed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    service: String,
    event_type_category: String,
    event_type_code: String,
    communication_id: String,
    #[serde(default)]
    affected_account: Option<String>,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    end_time: Option<String>,
    #[serde(default)]
    status_code: HealthStatus,
    #[serde(default)]
    affected_entities: Vec<Entity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entity {
    entity_value: String,
}

pub fn parse(envelope: &Envelope, detail: serde_json::Value) -> Result<EventDetail, ParseError> {
    let detail: Detail = detail_as(envelope, detail)?;
    if detail.service != "EC2" || detail.event_type_category != "scheduledChange" {
        return Err(ParseError::Irrelevant {
            detail_type: DETAIL_TYPE.to_string(),
            reason: format!(
                "service {} / category {} (spotkube acts on EC2 scheduledChange only)",
                detail.service, detail.event_type_category
            ),
        });
    }
    let instance_ids: Vec<String> = detail
        .affected_entities
        .iter()
        .filter_map(|e| instance_id_of(&e.entity_value))
        .collect();
    if instance_ids.is_empty() {
        return Err(ParseError::invalid(
            DETAIL_TYPE,
            "no EC2 instance among affectedEntities",
        ));
    }
    Ok(EventDetail::ScheduledChange(ScheduledChange {
        event_type_code: detail.event_type_code,
        communication_id: detail.communication_id,
        affected_account: detail.affected_account.or_else(|| envelope.account.clone()),
        start: detail.start_time.as_deref().map(rfc1123).transpose()?,
        end: detail.end_time.as_deref().map(rfc1123).transpose()?,
        status: detail.status_code,
        instance_ids,
    }))
}

/// `i-…` or `arn:aws:ec2:<region>:<account>:instance/i-…` → `i-…`.
fn instance_id_of(entity: &str) -> Option<String> {
    let id = entity.rsplit_once("instance/").map_or(entity, |(_, id)| id);
    valid_instance_id(id).then(|| id.to_string())
}

fn rfc1123(text: &str) -> Result<Timestamp, ParseError> {
    jiff::fmt::rfc2822::parse(text)
        .map(|zoned| zoned.timestamp())
        .map_err(|e| ParseError::invalid(DETAIL_TYPE, format!("time {text:?}: {e}")))
}
