//! The intake drops events from another AWS account or region before touching the
//! cluster, counts them, and keeps accepting moto's events, which carry no `account`.

// Shared with api_component.rs; this file uses only part of it.
#[allow(dead_code)]
mod mock;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spotkube_controller::decide::Planning;
use spotkube_controller::intake::{Intake, Outcome};
use spotkube_controller::nodes_index::NodesIndex;
use spotkube_controller::origin::Origin;
use spotkube_shared::watch::WatchIndex;

const INSTANCE: &str = "i-0a1b2c3d4e5f60718";

fn spot_warning(account: Option<&str>, region: &str) -> String {
    let mut event = json!({
        "version": "0", "id": "4b1d2f0e-7c55-4a8e-9f1b-2d6a1c3e5f70",
        "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
        "time": "2026-11-20T10:15:00Z", "region": region,
        "detail": { "instance-id": INSTANCE, "instance-action": "terminate" },
    });
    if let Some(account) = account {
        event["account"] = Value::from(account);
    }
    event.to_string()
}

/// An intake that admits events of account 111122223333 in us-east-1 only.
fn intake(actor: spotkube_controller::act::Actor) -> Intake {
    Intake {
        actor,
        queue_url: "http://127.0.0.1:1/queue".into(),
        visibility_timeout: Duration::from_secs(60),
        origin: Origin {
            account: Some("111122223333".into()),
            region: Some("us-east-1".into()),
        },
        planning: Planning::default(),
        concurrency: 1,
        message_deadline: Duration::from_secs(60),
        capacity_wake: None,
    }
}

#[tokio::test]
async fn events_from_another_account_or_region_are_dropped_counted_and_never_acted_on() {
    // An empty script: any request to the API server fails the test.
    let (client, served) = mock::client(vec![]);
    let nodes = NodesIndex::default();
    nodes.apply(&serde_json::from_value(mock::node("spot-a", INSTANCE, "1")).unwrap());
    let (actor, registry) = mock::actor(client, nodes);
    let intake = intake(actor);
    for (body, reason) in [
        (spot_warning(Some("999999999999"), "us-east-1"), "account"),
        (spot_warning(Some("111122223333"), "eu-west-1"), "region"),
        (spot_warning(None, "eu-west-1"), "region"),
    ] {
        // Dropped means deleted from the queue: it will never be ours.
        assert_eq!(
            intake.process(&body, Instant::now()).await,
            Outcome::NotOurs,
            "{reason}: {body}"
        );
    }
    served.check();
    let metrics = mock::scrape(&registry);
    for line in [
        r#"spotkube_controller_foreign_events_total{reason="account"} 1"#,
        r#"spotkube_controller_foreign_events_total{reason="region"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(
        !metrics.contains(r#"spotkube_controller_events_total{kind="spot-interruption"}"#),
        "foreign events are not counted as received kinds:\n{metrics}"
    );
}

#[tokio::test]
async fn an_event_without_an_account_from_our_region_is_acted_on() {
    let (client, served) = mock::client(vec![
        // Admitted: the intake reads the Node (gone meanwhile, so nothing else to do).
        mock::Expect::get("/api/v1/nodes/spot-a").fails(404, "NotFound"),
    ]);
    let nodes = NodesIndex::default();
    nodes.apply(&serde_json::from_value(mock::node("spot-a", INSTANCE, "1")).unwrap());
    let (actor, registry) = mock::actor(client, nodes);
    let intake = intake(actor);
    let outcome = intake
        .process(&spot_warning(None, "us-east-1"), Instant::now())
        .await;
    assert_eq!(outcome, Outcome::Done);
    served.check();
    let metrics = mock::scrape(&registry);
    assert!(
        metrics.contains(r#"spotkube_controller_events_total{kind="spot-interruption"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("foreign_events_total{"), "{metrics}");
}
