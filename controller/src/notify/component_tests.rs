//! The notifier against a loopback HTTP receiver: what each sink receives, retries,
//! dedup, the rate limit, a full queue and the drain at shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::EventType;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;

/// Records every POST (path, body) and answers each path from its script of statuses
/// (the last one repeats; no script: 200).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    script: Arc<Mutex<HashMap<String, Vec<u16>>>>,
}

impl Receiver {
    async fn start(script: &[(&str, &[u16])]) -> (Receiver, String) {
        let receiver = Receiver::default();
        *receiver.script.lock().unwrap() = script
            .iter()
            .map(|(path, statuses)| (path.to_string(), statuses.to_vec()))
            .collect();
        let router = Router::new()
            .route("/{*path}", post(answer))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (receiver, base)
    }

    /// The bodies posted to `path`, every attempt.
    fn bodies(&self, path: &str) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| body.clone())
            .collect()
    }

    async fn wait_for(&self, path: &str, count: usize) -> Vec<Value> {
        for _ in 0..200 {
            let bodies = self.bodies(path);
            if bodies.len() >= count {
                return bodies;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{path}: {count} posts expected, got {:?}",
            self.bodies(path)
        );
    }
}

async fn answer(State(receiver): State<Receiver>, uri: Uri, body: axum::Json<Value>) -> StatusCode {
    let path = uri.path().to_string();
    receiver.got.lock().unwrap().push((path.clone(), body.0));
    let mut script = receiver.script.lock().unwrap();
    let status = match script.get_mut(&path) {
        Some(statuses) if statuses.len() > 1 => statuses.remove(0),
        Some(statuses) => statuses[0],
        None => 200,
    };
    StatusCode::from_u16(status).unwrap()
}

fn settings() -> Settings {
    Settings {
        cluster: Some("prod-eu".into()),
        retry: Retry {
            attempts: 3,
            first_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
        },
        ..Settings::default()
    }
}

fn url(base: &str, path: &str) -> WebhookUrl {
    WebhookUrl::from_flag(&format!("{base}{path}")).unwrap()
}

fn start(
    slack: Option<WebhookUrl>,
    webhook: Option<WebhookUrl>,
    settings: Settings,
) -> (Notifier, Sender, Metrics) {
    let metrics = Metrics::register(&mut Registry::default());
    let sinks = sinks(slack.as_ref(), webhook.as_ref()).unwrap();
    let (notifier, sender) = Notifier::start(sinks, settings, metrics.clone())
        .unwrap()
        .expect("a sink");
    (notifier, sender, metrics)
}

fn counted(metrics: &Metrics, sink: &str, outcome: &str) -> u64 {
    metrics
        .notifications
        .get_or_create(&vec![
            ("sink", sink.to_string()),
            ("outcome", outcome.to_string()),
        ])
        .get()
}

fn node(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

fn deployment(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("Deployment".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

/// The body without its `time`, after checking it is an RFC 3339 timestamp.
fn timeless(mut body: Value) -> Value {
    let time = body["time"].take();
    time.as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .expect("time is RFC 3339");
    body.as_object_mut().unwrap().remove("time");
    body
}

#[tokio::test]
async fn each_sink_gets_its_shape_once_per_event_and_a_5xx_is_retried() {
    let (receiver, base) = Receiver::start(&[("/hook", &[503, 200])]).await;
    let (notifier, sender, metrics) = start(
        Some(url(&base, "/slack")),
        Some(url(&base, "/hook")),
        settings(),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(sender.run(stop.clone()));

    let note =
        "spot-interruption-warning: tainted spotkube.io/interruption:NoSchedule and cordoned";
    notifier.notify(
        &node("ip-10-0-1-7"),
        EventType::Warning,
        "SpotInterruption",
        note,
    );
    // A redelivery's Event: the same notification, not sent again.
    notifier.notify(
        &node("ip-10-0-1-7"),
        EventType::Warning,
        "SpotInterruption",
        note,
    );
    notifier.notify(
        &deployment("shop", "web"),
        EventType::Normal,
        "SurgeRestart",
        "rollout restart: its node is being interrupted (event e-1)",
    );
    // Not a notification.
    notifier.notify(&deployment("shop", "web"), EventType::Normal, "Scaled", "x");

    let slack = receiver.wait_for("/slack", 2).await;
    // The first post to /hook got a 503 and was retried.
    let hook = receiver.wait_for("/hook", 3).await;
    stop.cancel();
    running.await.unwrap();

    assert_eq!(
        slack,
        [
            json!({ "text": format!(
                "*:rotating_light: Spot interruption*: Node `ip-10-0-1-7` (cluster `prod-eu`)\n{note}"
            ) }),
            json!({ "text": "*:arrows_counterclockwise: Surge started*: Deployment `shop/web` (cluster `prod-eu`)\nrollout restart: its node is being interrupted (event e-1)" }),
        ]
    );
    assert_eq!(hook[0], hook[1], "the retry posts the same body");
    let hook: Vec<Value> = hook.into_iter().skip(1).map(timeless).collect();
    assert_eq!(
        hook,
        [
            json!({
                "kind": "interruption",
                "reason": "SpotInterruption",
                "type": "Warning",
                "object": { "kind": "Node", "namespace": null, "name": "ip-10-0-1-7" },
                "node": "ip-10-0-1-7",
                "message": note,
                "cluster": "prod-eu",
            }),
            json!({
                "kind": "surge_started",
                "reason": "SurgeRestart",
                "type": "Normal",
                "object": { "kind": "Deployment", "namespace": "shop", "name": "web" },
                "node": null,
                "message": "rollout restart: its node is being interrupted (event e-1)",
                "cluster": "prod-eu",
            }),
        ]
    );
    for sink in ["slack", "webhook"] {
        assert_eq!(counted(&metrics, sink, "sent"), 2, "{sink}");
        assert_eq!(counted(&metrics, sink, "duplicate"), 1, "{sink}");
        assert_eq!(counted(&metrics, sink, "failed"), 0, "{sink}");
    }
}

#[tokio::test]
async fn a_4xx_is_not_retried_and_is_counted_as_failed() {
    let (receiver, base) = Receiver::start(&[("/gone", &[404])]).await;
    let (notifier, sender, metrics) = start(None, Some(url(&base, "/gone")), settings());
    let stop = CancellationToken::new();
    let running = tokio::spawn(sender.run(stop.clone()));
    notifier.notify(
        &node("n1"),
        EventType::Warning,
        "SpotkubeActionFailed",
        "restart failed",
    );
    receiver.wait_for("/gone", 1).await;
    for _ in 0..100 {
        if counted(&metrics, "webhook", "failed") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counted(&metrics, "webhook", "failed"), 1);
    // Retries would have come 10 ms, 20 ms later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.bodies("/gone").len(), 1);
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn what_is_queued_at_shutdown_is_still_sent() {
    let (receiver, base) = Receiver::start(&[]).await;
    let (notifier, sender, metrics) = start(None, Some(url(&base, "/hook")), settings());
    for name in ["a", "b", "c"] {
        notifier.notify(
            &deployment("shop", name),
            EventType::Normal,
            "ReplacementReady",
            "ready",
        );
    }
    let stop = CancellationToken::new();
    stop.cancel();
    // Stopped before it started: it only drains, and returns.
    tokio::time::timeout(Duration::from_secs(5), sender.run(stop))
        .await
        .expect("the drain is bounded");
    let names: Vec<Value> = receiver
        .bodies("/hook")
        .into_iter()
        .map(|b| b["object"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("a"), json!("b"), json!("c")]);
    assert_eq!(counted(&metrics, "webhook", "sent"), 3);
}

#[tokio::test]
async fn past_the_rate_limit_notifications_are_held_back_and_counted() {
    let (receiver, base) = Receiver::start(&[]).await;
    let (notifier, sender, metrics) = start(
        Some(url(&base, "/slack")),
        None,
        Settings {
            per_minute: 2,
            ..settings()
        },
    );
    for name in ["a", "b", "c", "d"] {
        notifier.notify(
            &node(name),
            EventType::Warning,
            "SpotInterruption",
            "tainted",
        );
    }
    let stop = CancellationToken::new();
    stop.cancel();
    sender.run(stop).await;
    assert_eq!(receiver.bodies("/slack").len(), 2);
    assert_eq!(counted(&metrics, "slack", "sent"), 2);
    assert_eq!(counted(&metrics, "slack", "rate_limited"), 2);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let (_receiver, base) = Receiver::start(&[]).await;
    let (notifier, _sender, metrics) = start(
        Some(url(&base, "/slack")),
        Some(url(&base, "/hook")),
        Settings {
            queue: 1,
            ..settings()
        },
    );
    // Nobody sends: the second and third do not fit and notify returns at once.
    for name in ["a", "b", "c"] {
        notifier.notify(
            &node(name),
            EventType::Warning,
            "SpotInterruption",
            "tainted",
        );
    }
    for sink in ["slack", "webhook"] {
        assert_eq!(counted(&metrics, sink, "dropped"), 2, "{sink}");
    }
}

#[test]
fn a_summary_says_how_many_were_held_back() {
    let time: jiff::Timestamp = "2026-11-20T10:00:00Z".parse().unwrap();
    let slack = Sink {
        format: Format::Slack,
        url: WebhookUrl::from_flag("https://hooks.slack.com/x").unwrap(),
    };
    let generic = Sink {
        format: Format::Generic,
        url: WebhookUrl::from_flag("https://example.com/x").unwrap(),
    };
    assert_eq!(
        slack.summary(7, Some("prod"), time),
        json!({ "text": ":mute: 7 notification(s) suppressed by the rate limit (cluster `prod`)" })
    );
    assert_eq!(
        generic.summary(7, None, time),
        json!({
            "kind": "suppressed", "count": 7,
            "message": "7 notification(s) suppressed by the rate limit",
            "time": "2026-11-20T10:00:00Z", "cluster": null,
        })
    );
}
