//! EC2 Spot Instance Interruption Warning.

use serde::Deserialize;

use super::{Envelope, EventDetail, ParseError, SPOT_WARNING_LEAD, checked_instance_id, detail_as};

pub const SOURCE: &str = "aws.ec2";
pub const DETAIL_TYPE: &str = "EC2 Spot Instance Interruption Warning";

/// What EC2 will do to the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceAction {
    Hibernate,
    Stop,
    Terminate,
}

#[derive(Deserialize)]
struct Detail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    #[serde(rename = "instance-action")]
    instance_action: InstanceAction,
}

pub fn parse(envelope: &Envelope, detail: serde_json::Value) -> Result<EventDetail, ParseError> {
    let detail: Detail = detail_as(envelope, detail)?;
    // The event carries no deadline: it is sent about two minutes before the action.
    let deadline = envelope
        .time
        .checked_add(SPOT_WARNING_LEAD)
        .map_err(|e| ParseError::invalid(DETAIL_TYPE, e))?;
    Ok(EventDetail::SpotInterruption {
        instance_id: checked_instance_id(envelope, detail.instance_id)?,
        action: detail.instance_action,
        deadline,
    })
}
