//! Fuzz target: an SQS message body → the controller's intake (`Intake::process`, the
//! real path: `events::parse`, then the routing into [`Outcome`]).
//!
//! Inputs: arbitrary bytes (as the string SQS delivers), arbitrary JSON, and the
//! captured EventBridge events (`testdata/fixtures/events/`) structurally mutated: a
//! field removed, a value of another type, huge strings, unknown or misspelt
//! `source` / `detail-type`, another kind's `detail`, bad instance ids and times, Health
//! events for other services. The node index is empty and the API server a script with
//! no request in it, so nothing may be acted on. Invariants, per input:
//! - never a panic (parse or routing);
//! - not JSON, not an EventBridge envelope, or a `(source, detail-type)` that is not one
//!   of the four kinds spotkube consumes (listed here from the fixtures' README, not
//!   taken from the registry) → `Outcome::Rejected`: kept, so the queue's dead-letter
//!   queue takes it after `maxReceiveCount`;
//! - a known kind: `Rejected` when its detail is unreadable, `NotOurs` (deleted) when it
//!   is irrelevant (a Health event for another service) or parsed (no Node of this
//!   cluster has the instance) — the same routing `events::parse`'s error gives;
//! - a parsed event is the kind its envelope names, its instance ids are EC2 ids and the
//!   ones its `detail` carries;
//! - no request reaches the API server.
//!
//! Cases: `SPOTKUBE_FUZZ_CASES` (default: proptest's `PROPTEST_CASES`, else 256);
//! seed: `SPOTKUBE_FUZZ_SEED` (default random, printed). `make fuzz` runs 10⁶.

// Shared with the other component tests; this file uses only part of it.
#[allow(dead_code)]
mod mock;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use spotkube_controller::decide::Planning;
use spotkube_controller::intake::{Intake, Outcome};
use spotkube_controller::nodes_index::NodesIndex;
use spotkube_controller::origin::Origin;
use spotkube_shared::events::{self, EventDetail, ParseError};

// The harness (count, seed, no failure files) every fuzz target shares.
#[path = "../../testdata/fuzz_harness.rs"]
mod fuzz_harness;
use fuzz_harness::fuzz;

// ---- inputs ----------------------------------------------------------------------------

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/fixtures/events");

const FIXTURE_FILES: &[&str] = &[
    "spot-interruption-warning.json",
    "rebalance-recommendation.json",
    "instance-state-change.json",
    "health-scheduled-change.json",
];

/// The four kinds spotkube consumes: `(source, detail-type)`.
const KNOWN: &[(&str, &str)] = &[
    ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
    ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
    ("aws.ec2", "EC2 Instance State-change Notification"),
    ("aws.health", "AWS Health Event"),
];

fn fixtures() -> Vec<Value> {
    FIXTURE_FILES
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(format!("{FIXTURES}/{f}")).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect()
}

/// Every path in a JSON tree (object keys and array indices), root excluded.
fn paths(v: &Value) -> Vec<Vec<PathStep>> {
    let mut out = Vec::new();
    fn walk(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    prefix.push(PathStep::Key(k.clone()));
                    out.push(prefix.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    prefix.push(PathStep::At(i));
                    out.push(prefix.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {}
        }
    }
    walk(v, &mut Vec::new(), &mut out);
    out
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    At(usize),
}

fn parent_mut<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut target = v;
    for step in path {
        target = match step {
            PathStep::Key(k) => target.get_mut(k)?,
            PathStep::At(i) => target.get_mut(*i)?,
        };
    }
    Some(target)
}

/// One structural change to an event.
#[derive(Debug, Clone)]
enum Mutation {
    /// Remove the field / element at the `Index`-th path.
    Remove(Index),
    /// Replace the value at the `Index`-th path.
    Replace(Index, Value),
    /// Set a top-level or `detail` field.
    Set(&'static str, Value),
    SetDetail(&'static str, Value),
    /// Put another fixture's `detail` in.
    SwapDetail(usize),
}

fn wrong_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::from),
        // Huge strings.
        (1usize..=64, any::<char>()).prop_map(|(k, c)| Value::from(c.to_string().repeat(k * 1024))),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{"a": [1, {"b": null}]}])),
    ]
}

fn kind_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => select(KNOWN).prop_map(|(_, d)| Value::from(d)),
        1 => select(KNOWN).prop_map(|(_, d)| Value::from(d.to_lowercase())),
        1 => select(KNOWN).prop_map(|(_, d)| Value::from(format!("{d} "))),
        1 => select(&["EC2 Spot Fleet Error", "Scheduled Event", "AWS API Call via CloudTrail", ""][..])
            .prop_map(Value::from),
        1 => ".{0,24}".prop_map(Value::from),
    ]
}

fn source_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => select(&["aws.ec2", "aws.health"][..]).prop_map(Value::from),
        1 => select(&["aws.autoscaling", "AWS.EC2", "aws.ec2 ", "custom.app", ""][..])
            .prop_map(Value::from),
        1 => ".{0,12}".prop_map(Value::from),
    ]
}

fn instance_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => "i-[0-9a-f]{17}".prop_map(Value::from),
        1 => "i-[0-9a-f]{8}".prop_map(Value::from),
        2 => select(&["i-123", "i-0A1B2C3D4E5F6071G", "", "i-", "arn:aws:ec2:us-east-1:1:instance/i-0a1b2c3d4e5f60718"][..])
            .prop_map(Value::from),
        1 => "i-[0-9a-z]{0,20}".prop_map(Value::from),
    ]
}

fn time_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(
            &[
                "2026-11-20T10:15:00Z",
                "9999-12-31T23:59:59Z",
                // jiff's last instant is 9999-12-30T22:00:00.999999999Z: the deadline
                // (time + 120 s) of these overflows.
                "9999-12-30T21:59:30Z",
                "9999-12-30T22:00:00Z",
                "-009999-01-01T00:00:00Z",
                "2026-13-40T25:61:61Z",
                "yesterday",
                "Sat, 28 Nov 2026 13:19:03 GMT",
                "Sat, 31 Feb 2026 13:19:03 GMT",
            ][..]
        )
        .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::Remove),
        3 => (any::<Index>(), wrong_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => kind_name().prop_map(|v| Mutation::Set("detail-type", v)),
        2 => source_name().prop_map(|v| Mutation::Set("source", v)),
        2 => time_value().prop_map(|v| Mutation::Set("time", v)),
        1 => (select(&["account", "region", "id"][..]), wrong_value())
            .prop_map(|(k, v)| Mutation::Set(k, v)),
        2 => instance_id().prop_map(|v| Mutation::SetDetail("instance-id", v)),
        1 => select(&["hibernate", "stop", "terminate", "reboot", "TERMINATE"][..])
            .prop_map(|v| Mutation::SetDetail("instance-action", Value::from(v))),
        1 => select(&["pending", "running", "stopping", "stopped", "shutting-down", "terminated", "exploded"][..])
            .prop_map(|v| Mutation::SetDetail("state", Value::from(v))),
        1 => select(&["EC2", "RDS", "ec2", ""][..])
            .prop_map(|v| Mutation::SetDetail("service", Value::from(v))),
        1 => select(&["scheduledChange", "issue", "accountNotification"][..])
            .prop_map(|v| Mutation::SetDetail("eventTypeCategory", Value::from(v))),
        1 => select(&["upcoming", "open", "closed", "cancelled"][..])
            .prop_map(|v| Mutation::SetDetail("statusCode", Value::from(v))),
        1 => time_value().prop_map(|v| Mutation::SetDetail("startTime", v)),
        1 => prop::collection::vec(instance_id(), 0..3)
            .prop_map(|ids| Mutation::SetDetail("affectedEntities",
                Value::from(ids.into_iter().map(|id| json!({"entityValue": id})).collect::<Vec<_>>()))),
        1 => (0..FIXTURE_FILES.len()).prop_map(Mutation::SwapDetail),
    ]
}

fn mutate(fixtures: &[Value], mut event: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        match m {
            Mutation::Remove(index) | Mutation::Replace(index, _) => {
                let all = paths(&event);
                if all.is_empty() {
                    continue;
                }
                let path = index.get(&all);
                let (last, parent) = path.split_last().unwrap();
                let Some(parent) = parent_mut(&mut event, parent) else {
                    continue;
                };
                match (m, last, parent) {
                    (Mutation::Remove(_), PathStep::Key(k), Value::Object(map)) => {
                        map.remove(k);
                    }
                    (Mutation::Remove(_), PathStep::At(i), Value::Array(items)) => {
                        items.remove(*i);
                    }
                    (Mutation::Replace(_, v), PathStep::Key(k), Value::Object(map)) => {
                        map.insert(k.clone(), v.clone());
                    }
                    (Mutation::Replace(_, v), PathStep::At(i), Value::Array(items)) => {
                        items[*i] = v.clone();
                    }
                    _ => {}
                }
            }
            Mutation::Set(key, v) => {
                if let Some(map) = event.as_object_mut() {
                    map.insert(key.to_string(), v.clone());
                }
            }
            Mutation::SetDetail(key, v) => {
                if let Some(map) = event.get_mut("detail").and_then(Value::as_object_mut) {
                    map.insert(key.to_string(), v.clone());
                }
            }
            Mutation::SwapDetail(i) => {
                if let Some(map) = event.as_object_mut() {
                    map.insert("detail".into(), fixtures[*i]["detail"].clone());
                }
            }
        }
    }
    event
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        select(&["id", "source", "detail-type", "time", "detail", "aws.ec2"][..])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    select(
                        &[
                            "id",
                            "source",
                            "detail-type",
                            "time",
                            "detail",
                            "region",
                            "account",
                            "instance-id"
                        ][..]
                    )
                    .prop_map(String::from),
                    ".{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| json!(m)),
        ]
    })
}

/// A message body.
fn body() -> impl Strategy<Value = String> {
    let fixtures = fixtures();
    let bases = fixtures.clone();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => any_json().prop_map(|v| v.to_string()),
        6 => (0..bases.len(), prop::collection::vec(mutation(), 0..5))
            .prop_map(move |(i, ms)| mutate(&fixtures, bases[i].clone(), &ms).to_string()),
    ]
}

// ---- the property ----------------------------------------------------------------------

/// Outcomes seen, for the summary line: rejected, not ours, parsed.
static REJECTED: AtomicUsize = AtomicUsize::new(0);
static NOT_OURS: AtomicUsize = AtomicUsize::new(0);
static PARSED: AtomicUsize = AtomicUsize::new(0);

fn valid_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn check(
    runtime: &tokio::runtime::Runtime,
    intake: &Intake,
    body: &str,
) -> Result<(), TestCaseError> {
    let outcome = runtime.block_on(intake.process(body, Instant::now()));
    let parsed = events::parse(body);
    let json: Option<Value> = serde_json::from_str(body).ok();
    let pair = json.as_ref().and_then(|v| {
        Some((
            v.get("source")?.as_str()?.to_string(),
            v.get("detail-type")?.as_str()?.to_string(),
        ))
    });
    let known = pair
        .as_ref()
        .is_some_and(|(s, d)| KNOWN.contains(&(s.as_str(), d.as_str())));
    if !known {
        prop_assert_eq!(
            &outcome,
            &Outcome::Rejected,
            "not one of ours, yet not left for the DLQ: {:?}",
            parsed.as_ref().err()
        );
    }
    match &parsed {
        Err(ParseError::Irrelevant { .. }) => prop_assert_eq!(&outcome, &Outcome::NotOurs),
        Err(e) => prop_assert_eq!(&outcome, &Outcome::Rejected, "{}", e),
        Ok(event) => {
            // No node has the instance: nothing to do, deleted.
            prop_assert_eq!(&outcome, &Outcome::NotOurs);
            prop_assert!(known, "parsed an event of an unknown kind");
            let (source, detail_type) = pair.unwrap();
            prop_assert_eq!(&event.envelope.source, &source);
            prop_assert_eq!(&event.envelope.detail_type, &detail_type);
            let ids = event.instance_ids();
            prop_assert!(
                !ids.is_empty() && ids.iter().all(|id| valid_instance_id(id)),
                "{:?}",
                ids
            );
            let detail = &json.as_ref().unwrap()["detail"];
            match &event.detail {
                EventDetail::ScheduledChange(change) => {
                    let entities: Vec<String> = detail["affectedEntities"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["entityValue"].as_str().map(String::from))
                        .collect();
                    for id in &change.instance_ids {
                        prop_assert!(
                            entities
                                .iter()
                                .any(|e| e == id || e.ends_with(&format!("instance/{id}"))),
                            "{} not among {:?}",
                            id,
                            entities
                        );
                    }
                }
                _ => prop_assert_eq!(&detail["instance-id"], ids[0]),
            }
        }
    }
    match outcome {
        Outcome::Rejected => REJECTED.fetch_add(1, Ordering::Relaxed),
        _ if parsed.is_ok() => PARSED.fetch_add(1, Ordering::Relaxed),
        _ => NOT_OURS.fetch_add(1, Ordering::Relaxed),
    };
    Ok(())
}

#[test]
fn fuzz_event_intake() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // An empty script: any request to the API server is out of script.
    let (client, served) = runtime.block_on(async { mock::client(vec![]) });
    let (actor, _registry) = runtime.block_on(async { mock::actor(client, NodesIndex::default()) });
    let intake = Intake {
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
    };
    fuzz("event-intake", body(), |body| {
        check(&runtime, &intake, &body)
    });
    served.check();
    println!(
        "fuzz event-intake: {} rejected (DLQ path), {} irrelevant or foreign (deleted), {} parsed",
        REJECTED.load(Ordering::Relaxed),
        NOT_OURS.load(Ordering::Relaxed),
        PARSED.load(Ordering::Relaxed)
    );
}
