//! The Auto Scaling actions: one more instance for a group, never above its MaxSize,
//! and the removal of a drained instance with its group's desired capacity lowered, so
//! the group does not replace it.

use aws_sdk_autoscaling::error::ProvideErrorMetadata;

use super::pools::{Group, describe_group};
use crate::aws::send_retrying_throttling;
use crate::error::Result;

/// What [`request_one`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// DesiredCapacity raised from `from` to `to`.
    Requested { from: i32, to: i32 },
    /// The group is at its MaxSize: nothing was asked.
    Capped { max: i32 },
}

/// What [`terminate_with_decrement`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// The group is terminating the instance; `activity` is the id of its activity.
    Terminating { activity: Option<String> },
    /// The instance is in no group (already terminated and detached, or never in one).
    NotInGroup,
}

fn is_validation<E: ProvideErrorMetadata>(e: &E, needle: &str) -> bool {
    e.code() == Some("ValidationError") && e.message().is_some_and(|m| m.contains(needle))
}

/// Raises `group`'s DesiredCapacity by one (`SetDesiredCapacity`, HonorCooldown false)
/// unless that would pass its MaxSize. The group is read first; AWS's own refusal
/// ("... is above max value ...", when the group grew meanwhile) is [`Request::Capped`]
/// too.
///
/// Read-then-set: two concurrent calls for one group can both raise it to the same
/// value. Callers serialise requests per group and record `to` before acting on it.
pub async fn request_one(
    autoscaling: &aws_sdk_autoscaling::Client,
    group: &str,
) -> Result<Request> {
    let state = describe_group(autoscaling, group).await?;
    request_above(autoscaling, &state).await
}

/// [`request_one`] for a group already read: DesiredCapacity `state.desired + 1`.
pub async fn request_above(
    autoscaling: &aws_sdk_autoscaling::Client,
    state: &Group,
) -> Result<Request> {
    if !state.below_max() {
        return Ok(Request::Capped { max: state.max });
    }
    let to = state.desired + 1;
    match set_desired(autoscaling, &state.name, to).await? {
        true => Ok(Request::Requested {
            from: state.desired,
            to,
        }),
        false => Ok(Request::Capped { max: state.max }),
    }
}

/// `SetDesiredCapacity(to)`, HonorCooldown false; `false` when AWS refuses it as above
/// MaxSize (the group changed since it was read).
pub async fn set_desired(
    autoscaling: &aws_sdk_autoscaling::Client,
    group: &str,
    to: i32,
) -> Result<bool> {
    let call = || async {
        // Bound first, not matched inline: the IAM scan of aws_shipped.rs reads
        // `<client>.<operation>(` with whitespace removed.
        let sent = autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(to)
            .honor_cooldown(false)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(e) if is_validation(&e, "above max value") => Ok(false),
            Err(e) => Err(e),
        }
    };
    send_retrying_throttling("SetDesiredCapacity", call).await
}

/// Terminates `instance_id` through its group with `ShouldDecrementDesiredCapacity`, so
/// the group shrinks by one instead of launching a replacement. An instance no group
/// manages any more is [`Termination::NotInGroup`] (a retry after a restart is safe).
pub async fn terminate_with_decrement(
    autoscaling: &aws_sdk_autoscaling::Client,
    instance_id: &str,
) -> Result<Termination> {
    let call = || async {
        let sent = autoscaling
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(true)
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Termination::Terminating {
                activity: out
                    .activity()
                    .and_then(|a| a.activity_id())
                    .map(str::to_string),
            }),
            Err(e) if is_validation(&e, "Instance Id not found") => Ok(Termination::NotInGroup),
            Err(e) => Err(e),
        }
    };
    send_retrying_throttling("TerminateInstanceInAutoScalingGroup", call).await
}

#[cfg(test)]
mod tests {
    use aws_sdk_autoscaling::error::ErrorMetadata;

    use super::*;

    #[test]
    fn only_the_named_validation_error_matches() {
        let above = ErrorMetadata::builder()
            .code("ValidationError")
            .message(
                "New SetDesiredCapacity value 4 is above max value 3 for the AutoScalingGroup.",
            )
            .build();
        assert!(is_validation(&above, "above max value"));
        assert!(!is_validation(&above, "Instance Id not found"));
        let below = ErrorMetadata::builder()
            .code("ValidationError")
            .message(
                "New SetDesiredCapacity value 0 is below min value 1 for the AutoScalingGroup.",
            )
            .build();
        assert!(!is_validation(&below, "above max value"));
        let throttled = ErrorMetadata::builder()
            .code("Throttling")
            .message("above max value")
            .build();
        assert!(!is_validation(&throttled, "above max value"));
    }
}
