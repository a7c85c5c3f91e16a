//! EC2 Instance State-change Notification.

use serde::Deserialize;

use super::{Envelope, EventDetail, ParseError, checked_instance_id, detail_as};

pub const SOURCE: &str = "aws.ec2";
pub const DETAIL_TYPE: &str = "EC2 Instance State-change Notification";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    /// Whether the instance is going or gone for good (spotkube's notes can go).
    pub fn is_ending(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

#[derive(Deserialize)]
struct Detail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    state: InstanceState,
}

pub fn parse(envelope: &Envelope, detail: serde_json::Value) -> Result<EventDetail, ParseError> {
    let detail: Detail = detail_as(envelope, detail)?;
    Ok(EventDetail::StateChange {
        instance_id: checked_instance_id(envelope, detail.instance_id)?,
        state: detail.state,
    })
}
