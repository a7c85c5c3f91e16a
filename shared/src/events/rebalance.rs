//! EC2 Instance Rebalance Recommendation.

use serde::Deserialize;

use super::{Envelope, EventDetail, ParseError, checked_instance_id, detail_as};

pub const SOURCE: &str = "aws.ec2";
pub const DETAIL_TYPE: &str = "EC2 Instance Rebalance Recommendation";

#[derive(Deserialize)]
struct Detail {
    #[serde(rename = "instance-id")]
    instance_id: String,
}

pub fn parse(envelope: &Envelope, detail: serde_json::Value) -> Result<EventDetail, ParseError> {
    let detail: Detail = detail_as(envelope, detail)?;
    Ok(EventDetail::RebalanceRecommendation {
        instance_id: checked_instance_id(envelope, detail.instance_id)?,
    })
}
