//! Whether a group's scale-out worked, read from its scaling activities: launched,
//! failed for want of capacity (time to fall back), or not known yet.
//!
//! AWS tries a group's zones in turn, so a Failed activity in one zone can be followed by
//! a Successful launch in another, and Failed activities repeat for as long as the
//! shortage lasts. So the verdict weighs the newest activities since the request
//! together with InService against Desired, never a single Failed line.

use std::time::Duration;

use aws_sdk_autoscaling::types::{Activity, ScalingActivityStatusCode};
use jiff::Timestamp;

use super::pools::{Group, describe_group};
use crate::aws::send_retrying_throttling;
use crate::error::Result;

/// What a Failed activity's message contains when the failure is a capacity shortage
/// (matched without regard to case).
pub const CAPACITY_ERRORS: &[&str] = &[
    "InsufficientInstanceCapacity",
    "capacity-not-available",
    "Spot request could not be fulfilled",
    "MaxSpotInstanceCountExceeded",
    "There is no Spot capacity available",
    "do not have sufficient",
];

/// How far before the request activities still count: AWS's clock is not ours, and
/// some implementations (moto) stamp activities to the second.
pub const CLOCK_SLACK: Duration = Duration::from_secs(2);

const LAUNCHING: &str = "Launching a new EC2 instance: ";

/// The verdict on a scale-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Instances launched since the request, newest first.
    Launched(Vec<String>),
    /// The group cannot launch for want of capacity: the newest relevant activity failed
    /// so and the group is still short of its desired capacity. Type and zone are those
    /// the message or the activity's details name.
    CapacityError {
        message: String,
        instance_type: Option<String>,
        zone: Option<String>,
    },
    /// Nothing decisive yet (a launch in progress, a failure of another kind, or no
    /// activity): ask again, or give up after a timeout.
    Pending,
}

/// The id of the instance a Successful launch activity started.
pub fn launched_instance(activity: &Activity) -> Option<&str> {
    if activity.status_code() != Some(&ScalingActivityStatusCode::Successful) {
        return None;
    }
    let id = activity.description()?.strip_prefix(LAUNCHING)?.trim();
    id.starts_with("i-").then_some(id)
}

/// The capacity error of a Failed activity, as [`Outcome::CapacityError`]; `None` for
/// any other activity.
pub fn capacity_error(activity: &Activity) -> Option<Outcome> {
    if activity.status_code() != Some(&ScalingActivityStatusCode::Failed) {
        return None;
    }
    let message = activity
        .status_message()
        .filter(|m| !m.is_empty())
        .or(activity.description())?;
    let haystack =
        format!("{message} {}", activity.description().unwrap_or_default()).to_ascii_lowercase();
    if !CAPACITY_ERRORS
        .iter()
        .any(|needle| haystack.contains(&needle.to_ascii_lowercase()))
    {
        return None;
    }
    Some(Outcome::CapacityError {
        message: message.to_string(),
        instance_type: type_in(message),
        zone: zone_in_details(activity.details()).or_else(|| zone_in(message)),
    })
}

/// `m7g.large` of "do not have sufficient m7g.large capacity".
fn type_in(message: &str) -> Option<String> {
    let rest = &message[message.find("sufficient ")? + "sufficient ".len()..];
    let (word, after) = rest.split_once(' ')?;
    (after.starts_with("capacity") && word.contains('.')).then(|| word.to_string())
}

/// `us-east-1a` of "in the Availability Zone you requested (us-east-1a)".
fn zone_in(message: &str) -> Option<String> {
    let marker = "Availability Zone you requested (";
    let rest = &message[message.find(marker)? + marker.len()..];
    let zone = &rest[..rest.find(')')?];
    (!zone.is_empty()).then(|| zone.to_string())
}

/// The "Availability Zone" of an activity's Details, a JSON object.
fn zone_in_details(details: Option<&str>) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(details?).ok()?;
    Some(value.get("Availability Zone")?.as_str()?.to_string())
}

fn start(activity: &Activity) -> Option<i128> {
    activity.start_time().map(|t| t.as_nanos())
}

/// The earliest activity start that still belongs to a request made at `since`.
pub fn window_start(since: Timestamp) -> i128 {
    since.as_nanosecond() - CLOCK_SLACK.as_nanos() as i128
}

/// Judges a scale-out requested at `since` from the group's activities (any order; only
/// those since the request count) and its state now.
pub fn classify(activities: &[Activity], since: Timestamp, group: &Group) -> Outcome {
    let from = window_start(since);
    let mut recent: Vec<&Activity> = activities
        .iter()
        .filter(|a| start(a).is_some_and(|t| t >= from))
        .collect();
    recent.sort_by_key(|a| std::cmp::Reverse(start(a)));
    let launched: Vec<String> = recent
        .iter()
        .filter_map(|a| launched_instance(a).map(str::to_string))
        .collect();
    if group.in_service >= group.desired {
        // The group has what it asked for: any failure since was overcome.
        return if launched.is_empty() {
            Outcome::Pending
        } else {
            Outcome::Launched(launched)
        };
    }
    for activity in recent {
        if launched_instance(activity).is_some() {
            return Outcome::Launched(launched);
        }
        if let Some(error) = capacity_error(activity) {
            return error;
        }
    }
    Outcome::Pending
}

/// The group's activities that started since `since` (less [`CLOCK_SLACK`]), newest
/// first; pages are read only until an older one shows up.
pub async fn activities_since(
    autoscaling: &aws_sdk_autoscaling::Client,
    group: &str,
    since: Timestamp,
) -> Result<Vec<Activity>> {
    let from = window_start(since);
    let call = || async {
        let mut items = autoscaling
            .describe_scaling_activities()
            .auto_scaling_group_name(group)
            .into_paginator()
            .items()
            .send();
        let mut recent = Vec::new();
        while let Some(activity) = items.try_next().await? {
            // AWS lists newest first: the first older one ends the window.
            if start(&activity).is_some_and(|t| t < from) {
                break;
            }
            recent.push(activity);
        }
        Ok::<_, aws_sdk_autoscaling::error::SdkError<_, _>>(recent)
    };
    send_retrying_throttling("DescribeScalingActivities", call).await
}

/// The verdict on a scale-out of `group` requested at `since`: the group's state, then
/// its activities since, through [`classify`].
pub async fn outcome(
    autoscaling: &aws_sdk_autoscaling::Client,
    group: &str,
    since: Timestamp,
) -> Result<Outcome> {
    // The group first: activities read after it are at least as new as its counts.
    let state = describe_group(autoscaling, group).await?;
    let activities = activities_since(autoscaling, group, since).await?;
    Ok(classify(&activities, since, &state))
}

#[cfg(test)]
mod tests {
    use aws_smithy_types::DateTime;

    use super::*;

    const ON_DEMAND_ICE: &str = "Launching a new EC2 instance. Status Reason: We currently do \
        not have sufficient m7g.large capacity in the Availability Zone you requested \
        (us-east-1a). Our system will be working on provisioning additional capacity. \
        Launching EC2 instance failed.";
    const SPOT_ICE: &str = "Could not launch Spot Instances. InsufficientInstanceCapacity - \
        There is no Spot capacity available that matches your request. Launching EC2 \
        instance failed.";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_790_000_000 + secs).unwrap()
    }

    fn activity(
        secs: i64,
        status: ScalingActivityStatusCode,
        description: &str,
        message: Option<&str>,
        details: &str,
    ) -> Activity {
        Activity::builder()
            .activity_id(format!("act-{secs}"))
            .auto_scaling_group_name("web-spot")
            .cause("test")
            .start_time(DateTime::from_secs(at(secs).as_second()))
            .status_code(status)
            .set_status_message(message.map(str::to_string))
            .description(description)
            .details(details)
            .build()
    }

    fn launch(secs: i64, id: &str) -> Activity {
        activity(
            secs,
            ScalingActivityStatusCode::Successful,
            &format!("{LAUNCHING}{id}"),
            None,
            r#"{"Subnet ID":"subnet-1","Availability Zone":"us-east-1b"}"#,
        )
    }

    fn failed(secs: i64, description: &str, zone: &str) -> Activity {
        let message = description
            .strip_prefix("Launching a new EC2 instance. Status Reason: ")
            .unwrap_or(description);
        activity(
            secs,
            ScalingActivityStatusCode::Failed,
            description,
            Some(message),
            &format!(r#"{{"Availability Zone":"{zone}"}}"#),
        )
    }

    fn group(desired: i32, in_service: i32) -> Group {
        Group {
            name: "web-spot".into(),
            min: 0,
            max: 5,
            desired,
            in_service,
            zones: vec!["us-east-1a".into(), "us-east-1b".into()],
            instances: vec![],
        }
    }

    #[test]
    fn real_capacity_messages_are_capacity_errors_with_type_and_zone() {
        let on_demand = failed(10, ON_DEMAND_ICE, "us-east-1a");
        assert_eq!(
            capacity_error(&on_demand),
            Some(Outcome::CapacityError {
                message: ON_DEMAND_ICE
                    .strip_prefix("Launching a new EC2 instance. Status Reason: ")
                    .unwrap()
                    .into(),
                instance_type: Some("m7g.large".into()),
                zone: Some("us-east-1a".into()),
            })
        );
        let spot = failed(10, SPOT_ICE, "us-east-1c");
        let Some(Outcome::CapacityError {
            instance_type,
            zone,
            message,
        }) = capacity_error(&spot)
        else {
            panic!("not a capacity error: {spot:?}");
        };
        assert_eq!(message, SPOT_ICE);
        assert_eq!((instance_type, zone.as_deref()), (None, Some("us-east-1c")));

        // Without details the zone comes from the message.
        let bare = activity(
            10,
            ScalingActivityStatusCode::Failed,
            ON_DEMAND_ICE,
            None,
            "{}",
        );
        let Some(Outcome::CapacityError { zone, message, .. }) = capacity_error(&bare) else {
            panic!("not a capacity error");
        };
        assert_eq!(
            (zone.as_deref(), message.as_str()),
            (Some("us-east-1a"), ON_DEMAND_ICE)
        );

        for text in [
            "Could not launch Spot Instances. capacity-not-available - There is no capacity available.",
            "Spot request could not be fulfilled. Launching EC2 instance failed.",
            "Could not launch Spot Instances. MaxSpotInstanceCountExceeded - Max spot instance count exceeded.",
        ] {
            assert!(
                capacity_error(&failed(10, text, "us-east-1a")).is_some(),
                "{text}"
            );
        }
    }

    #[test]
    fn other_failures_and_other_statuses_are_not_capacity_errors() {
        let invalid = failed(
            10,
            "Launching a new EC2 instance. Status Reason: The image id '[ami-1]' does not \
             exist. Launching EC2 instance failed.",
            "us-east-1a",
        );
        assert_eq!(capacity_error(&invalid), None);
        let in_progress = activity(
            10,
            ScalingActivityStatusCode::InProgress,
            ON_DEMAND_ICE,
            Some(ON_DEMAND_ICE),
            "{}",
        );
        assert_eq!(capacity_error(&in_progress), None);
        assert_eq!(launched_instance(&launch(10, "i-0abc")), Some("i-0abc"));
        let terminating = activity(
            10,
            ScalingActivityStatusCode::Successful,
            "Terminating EC2 instance: i-0abc",
            None,
            "{}",
        );
        assert_eq!(launched_instance(&terminating), None);
    }

    #[test]
    fn a_failure_overcome_in_another_zone_is_a_launch() {
        // Newest first, as AWS lists them: failed in 1a, then launched in 1b.
        let activities = [
            launch(12, "i-0new"),
            failed(11, ON_DEMAND_ICE, "us-east-1a"),
        ];
        assert_eq!(
            classify(&activities, at(10), &group(3, 3)),
            Outcome::Launched(vec!["i-0new".into()])
        );
        // Even before InService catches up.
        assert_eq!(
            classify(&activities, at(10), &group(3, 2)),
            Outcome::Launched(vec!["i-0new".into()])
        );
    }

    #[test]
    fn repeated_failures_while_short_are_a_capacity_error() {
        // Listed out of order on purpose: the newest decides.
        let activities = [
            failed(11, SPOT_ICE, "us-east-1a"),
            failed(15, SPOT_ICE, "us-east-1b"),
            failed(13, SPOT_ICE, "us-east-1a"),
        ];
        let Outcome::CapacityError { zone, .. } = classify(&activities, at(10), &group(3, 2))
        else {
            panic!("not a capacity error");
        };
        assert_eq!(zone.as_deref(), Some("us-east-1b"));
    }

    #[test]
    fn the_newest_activity_decides_while_the_group_is_short() {
        // A launch, then the shortage: the group still misses an instance.
        let activities = [failed(14, SPOT_ICE, "us-east-1a"), launch(12, "i-0new")];
        assert!(matches!(
            classify(&activities, at(10), &group(4, 3)),
            Outcome::CapacityError { .. }
        ));
        // Once the group is whole, the launch is what counts.
        assert_eq!(
            classify(&activities, at(10), &group(4, 4)),
            Outcome::Launched(vec!["i-0new".into()])
        );
    }

    #[test]
    fn activities_before_the_request_do_not_count() {
        let old = [failed(0, SPOT_ICE, "us-east-1a"), launch(1, "i-0old")];
        assert_eq!(classify(&old, at(10), &group(3, 2)), Outcome::Pending);
        // Within the clock slack they still do (moto stamps to the second).
        let skewed = [launch(9, "i-0new")];
        assert_eq!(
            classify(&skewed, at(10), &group(3, 3)),
            Outcome::Launched(vec!["i-0new".into()])
        );
        // Nothing yet, or only an unrelated failure: pending.
        assert_eq!(classify(&[], at(10), &group(3, 2)), Outcome::Pending);
        let invalid = [failed(11, "The image id does not exist.", "us-east-1a")];
        assert_eq!(classify(&invalid, at(10), &group(3, 2)), Outcome::Pending);
    }
}
