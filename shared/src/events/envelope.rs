//! The EventBridge envelope common to every event.

use jiff::Timestamp;
use serde::Deserialize;

/// The fields every EventBridge event carries around its `detail`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub source: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub time: Timestamp,
    #[serde(default)]
    pub region: Option<String>,
    /// Absent when EventBridge on moto delivers to SQS: never required.
    #[serde(default)]
    pub account: Option<String>,
}
