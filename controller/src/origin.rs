//! Which AWS account and region this cluster's events come from. The queue policy
//! already limits senders to spotkube's EventBridge rules, but a rule in another
//! account or region forwarding into the queue (or a mis-wired shared queue) must not
//! taint Nodes here, so the intake drops such events and counts them.

use spotkube_shared::events::Envelope;

/// The account and region events must come from; `None` admits any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub account: Option<String>,
    pub region: Option<String>,
}

/// Why an event is not from this cluster's account and region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Foreign {
    #[error("event from account {got}, expected {expected}")]
    Account { got: String, expected: String },
    #[error("event from region {got}, expected {expected}")]
    Region { got: String, expected: String },
}

impl Foreign {
    /// The `reason` label of `spotkube_controller_foreign_events_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Foreign::Account { .. } => "account",
            Foreign::Region { .. } => "region",
        }
    }
}

impl Origin {
    /// Admits an event whose `account` and `region` match the expected ones. A field
    /// the event does not carry is admitted: EventBridge on moto omits `account`.
    pub fn admits(&self, envelope: &Envelope) -> Result<(), Foreign> {
        if let (Some(expected), Some(got)) = (&self.account, &envelope.account)
            && got != expected
        {
            return Err(Foreign::Account {
                got: got.clone(),
                expected: expected.clone(),
            });
        }
        if let (Some(expected), Some(got)) = (&self.region, &envelope.region)
            && got != expected
        {
            return Err(Foreign::Region {
                got: got.clone(),
                expected: expected.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(account: Option<&str>, region: Option<&str>) -> Envelope {
        Envelope {
            id: "e".into(),
            source: "aws.ec2".into(),
            detail_type: "EC2 Spot Instance Interruption Warning".into(),
            time: "2026-11-20T10:15:00Z".parse().unwrap(),
            region: region.map(Into::into),
            account: account.map(Into::into),
        }
    }

    fn origin(account: Option<&str>, region: Option<&str>) -> Origin {
        Origin {
            account: account.map(Into::into),
            region: region.map(Into::into),
        }
    }

    #[test]
    fn admits_its_own_account_and_region_and_events_that_do_not_say() {
        let ours = origin(Some("111122223333"), Some("us-east-1"));
        assert_eq!(
            ours.admits(&envelope(Some("111122223333"), Some("us-east-1"))),
            Ok(())
        );
        // moto's EventBridge → SQS delivery has no `account`.
        assert_eq!(ours.admits(&envelope(None, Some("us-east-1"))), Ok(()));
        assert_eq!(ours.admits(&envelope(None, None)), Ok(()));
        // Without flags, everything is admitted.
        let any = Origin::default();
        assert_eq!(
            any.admits(&envelope(Some("999999999999"), Some("eu-west-1"))),
            Ok(())
        );
    }

    #[test]
    fn rejects_another_account_or_region_and_says_which() {
        let ours = origin(Some("111122223333"), Some("us-east-1"));
        let other_account = ours
            .admits(&envelope(Some("999999999999"), Some("us-east-1")))
            .unwrap_err();
        assert_eq!(other_account.label(), "account");
        assert_eq!(
            other_account.to_string(),
            "event from account 999999999999, expected 111122223333"
        );
        let other_region = ours
            .admits(&envelope(Some("111122223333"), Some("eu-west-1")))
            .unwrap_err();
        assert_eq!(other_region.label(), "region");
        assert_eq!(
            other_region,
            Foreign::Region {
                got: "eu-west-1".into(),
                expected: "us-east-1".into()
            }
        );
        // Only the region is checked when only the region is known.
        let region_only = origin(None, Some("us-east-1"));
        assert_eq!(
            region_only
                .admits(&envelope(Some("999999999999"), Some("us-west-2")))
                .map_err(|f| f.label()),
            Err("region")
        );
    }
}
