//! Parsing the documented EventBridge samples exactly as they are.

use super::*;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../testdata/fixtures/events/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

#[test]
fn spot_interruption_warning_has_a_deadline_two_minutes_after_its_time() {
    let event = parse(&fixture("spot-interruption-warning.json")).unwrap();
    assert_eq!(event.envelope.id, "4b1d2f0e-7c55-4a8e-9f1b-2d6a1c3e5f70");
    assert_eq!(event.envelope.account.as_deref(), Some("111122223333"));
    assert_eq!(event.kind(), EventKind::SpotInterruption);
    assert_eq!(
        event.detail,
        EventDetail::SpotInterruption {
            instance_id: "i-0a1b2c3d4e5f60718".into(),
            action: InstanceAction::Terminate,
            deadline: ts("2026-11-20T10:17:00Z"),
        }
    );
    assert_eq!(event.instance_ids(), vec!["i-0a1b2c3d4e5f60718"]);
    assert_eq!(event.dedupe_key(), event.envelope.id);
}

#[test]
fn rebalance_recommendation_carries_only_the_instance() {
    let event = parse(&fixture("rebalance-recommendation.json")).unwrap();
    assert_eq!(
        event.detail,
        EventDetail::RebalanceRecommendation {
            instance_id: "i-0a1b2c3d4e5f60718".into()
        }
    );
    assert_eq!(event.envelope.time, ts("2026-11-20T09:58:12Z"));
}

#[test]
fn state_change_parses_kebab_case_states() {
    let event = parse(&fixture("instance-state-change.json")).unwrap();
    assert_eq!(
        event.detail,
        EventDetail::StateChange {
            instance_id: "i-0a1b2c3d4e5f60718".into(),
            state: InstanceState::ShuttingDown,
        }
    );
    assert!(InstanceState::ShuttingDown.is_ending());
    assert!(InstanceState::Terminated.is_ending());
    assert!(!InstanceState::Stopping.is_ending());
}

#[test]
fn health_scheduled_change_reads_rfc1123_times_and_arn_entities() {
    let event = parse(&fixture("health-scheduled-change.json")).unwrap();
    let EventDetail::ScheduledChange(change) = &event.detail else {
        panic!("{event:?}")
    };
    assert_eq!(
        change.event_type_code,
        "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED"
    );
    assert_eq!(change.instance_ids, vec!["i-0f9e8d7c6b5a43210".to_string()]);
    assert_eq!(change.start, Some(ts("2026-11-28T13:19:03Z")));
    assert_eq!(change.end, Some(ts("2026-11-28T13:49:03Z")));
    assert_eq!(change.status, HealthStatus::Upcoming);
    assert_eq!(
        event.dedupe_key(),
        "7c1e9a2b4d6f8a0c1e3f5a7b9d1c3e5f-1/111122223333"
    );
}

#[test]
fn health_entities_may_be_bare_ids_and_the_backup_region_copy_dedupes() {
    let mut value: serde_json::Value =
        serde_json::from_str(&fixture("health-scheduled-change.json")).unwrap();
    value["detail"]["affectedEntities"][0]["entityValue"] = "i-0f9e8d7c6b5a43210".into();
    let first = parse(&value.to_string()).unwrap();
    value["id"] = "another-id-from-the-backup-region".into();
    value["region"] = "us-west-2".into();
    let second = parse(&value.to_string()).unwrap();
    assert_eq!(first.instance_ids(), vec!["i-0f9e8d7c6b5a43210"]);
    assert_eq!(first.dedupe_key(), second.dedupe_key());
}

#[test]
fn a_closed_health_event_says_so() {
    let mut value: serde_json::Value =
        serde_json::from_str(&fixture("health-scheduled-change.json")).unwrap();
    value["detail"]["statusCode"] = "closed".into();
    let EventDetail::ScheduledChange(change) = parse(&value.to_string()).unwrap().detail else {
        panic!("not a scheduled change")
    };
    assert_eq!(change.status, HealthStatus::Closed);
}

#[test]
fn health_events_for_other_services_are_irrelevant() {
    let mut value: serde_json::Value =
        serde_json::from_str(&fixture("health-scheduled-change.json")).unwrap();
    value["detail"]["service"] = "RDS".into();
    assert!(matches!(
        parse(&value.to_string()),
        Err(ParseError::Irrelevant { .. })
    ));
}

#[test]
fn account_is_optional_as_on_moto() {
    let mut value: serde_json::Value =
        serde_json::from_str(&fixture("spot-interruption-warning.json")).unwrap();
    value.as_object_mut().unwrap().remove("account");
    let event = parse(&value.to_string()).unwrap();
    assert_eq!(event.envelope.account, None);
    assert_eq!(event.kind(), EventKind::SpotInterruption);
}

#[test]
fn unknown_detail_types_are_a_typed_error() {
    let mut value: serde_json::Value =
        serde_json::from_str(&fixture("rebalance-recommendation.json")).unwrap();
    value["detail-type"] = "EC2 Fleet Error".into();
    match parse(&value.to_string()) {
        Err(ParseError::Unknown {
            event_source,
            detail_type,
        }) => {
            assert_eq!(event_source, "aws.ec2");
            assert_eq!(detail_type, "EC2 Fleet Error");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn garbage_and_bad_details_are_errors_not_panics() {
    assert!(matches!(parse("hello"), Err(ParseError::Malformed(_))));
    assert!(matches!(parse("{}"), Err(ParseError::Malformed(_))));
    let mut value: serde_json::Value =
        serde_json::from_str(&fixture("spot-interruption-warning.json")).unwrap();
    value["detail"]["instance-action"] = "explode".into();
    assert!(matches!(
        parse(&value.to_string()),
        Err(ParseError::InvalidDetail { .. })
    ));
    value["detail"]["instance-action"] = "stop".into();
    value["detail"]["instance-id"] = "not-an-instance".into();
    assert!(matches!(
        parse(&value.to_string()),
        Err(ParseError::InvalidDetail { .. })
    ));
}

#[test]
fn registry_keys_are_unique() {
    let reg = registry();
    for (i, (s, d, _)) in reg.iter().enumerate() {
        assert!(
            reg[i + 1..].iter().all(|(s2, d2, _)| (s, d) != (s2, d2)),
            "{s} {d} registered twice"
        );
    }
}
