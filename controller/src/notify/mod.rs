//! Notifications to people: a Slack incoming webhook and/or a generic JSON webhook,
//! for interruptions, surges, evictions and failures.
//!
//! Design: every Kubernetes Event spotkube records goes through one place,
//! [`crate::context::Context::event`], so that is where notifications start: an
//! Event's reason maps to a [`Kind`] (most reasons notify, see [`Kind::of_event`])
//! and a future behaviour only needs an Event reason to be heard. Actions never wait
//! on a receiver: [`Notifier::notify`] only puts the notification in a bounded queue
//! (full: dropped and counted), and one [`Sender`] task drains it: dedup, a rate
//! limit per sink, posts with retries. The sender runs in the process's task set and,
//! on shutdown, sends what is still queued for a short while. Webhook URLs are
//! secrets ([`WebhookUrl`]): never printed in flags, errors or logs.

mod dedup;
mod kind;
mod rate;
mod secret;
mod sender;
mod sink;

#[cfg(test)]
mod component_tests;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::EventType;
use tokio::sync::mpsc::{self, error::TrySendError};

pub use kind::Kind;
pub use secret::WebhookUrl;
pub use sender::Sender;
pub use sink::{Format, Retry, Sink};

use crate::config::RunArgs;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What one notification says. Its object is the Event's; `node` is set when the
/// Event is about a Node.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub kind: Kind,
    /// The Event's reason (`SpotInterruption`, `SurgeRestart`, ...).
    pub reason: String,
    /// The Event's type: `Normal` or `Warning`.
    pub type_: &'static str,
    pub object: Named,
    pub node: Option<String>,
    /// The Event's note.
    pub message: String,
    pub time: jiff::Timestamp,
}

/// The object a notification is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Named {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Notification {
    /// The notification an Event calls for, if any.
    pub fn of_event(
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> Option<Notification> {
        let kind = Kind::of_event(type_, reason)?;
        let object = Named {
            kind: object.kind.clone().unwrap_or_default(),
            namespace: object.namespace.clone(),
            name: object.name.clone().unwrap_or_default(),
        };
        Some(Notification {
            kind,
            reason: reason.to_string(),
            type_: match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            },
            node: (object.kind == "Node").then(|| object.name.clone()),
            object,
            message: note.to_string(),
            time: jiff::Timestamp::now(),
        })
    }

    /// Two notifications with the same key within the dedup window are one: same
    /// kind, same object, same note (an Event's note names its interruption event).
    fn dedup_key(&self) -> (Kind, Named, String) {
        (self.kind, self.object.clone(), self.message.clone())
    }
}

/// How notifications are sent.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Named in every notification (`--cluster-name`).
    pub cluster: Option<String>,
    /// Per sink and minute; the excess is summarised.
    pub per_minute: usize,
    pub dedup_window: Duration,
    /// Notifications waiting for the sender; more are dropped (and counted).
    pub queue: usize,
    pub retry: Retry,
    /// How long the sender may go on sending what is queued at shutdown.
    pub drain_for: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            cluster: None,
            per_minute: 20,
            dedup_window: Duration::from_secs(600),
            queue: 256,
            retry: Retry {
                attempts: 4,
                first_delay: Duration::from_millis(500),
                timeout: Duration::from_secs(10),
            },
            drain_for: Duration::from_secs(5),
        }
    }
}

/// The handle every part of the controller notifies through ([`crate::context::Context`]
/// owns it). Cloning is cheap.
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Notification>,
    sinks: Arc<[Format]>,
    metrics: Metrics,
}

impl Notifier {
    /// The notifier and its sender for `sinks` (see [`sinks`]); `None` when there is
    /// none.
    pub fn start(
        sinks: Vec<Sink>,
        settings: Settings,
        metrics: Metrics,
    ) -> Result<Option<(Notifier, Sender)>> {
        if sinks.is_empty() {
            return Ok(None);
        }
        // reqwest takes rustls' process-wide provider (main installs it; so do tests).
        spotkube_shared::telemetry::install_crypto_provider();
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::Invalid(format!("notification HTTP client: {e}")))?;
        let (queue, received) = mpsc::channel(settings.queue.max(1));
        let notifier = Notifier {
            queue,
            sinks: sinks.iter().map(|s| s.format).collect(),
            metrics: metrics.clone(),
        };
        for sink in &sinks {
            tracing::info!(sink = sink.format.name(), url = %sink.url, "notifications on");
        }
        let sender = Sender::new(received, sinks, client, settings, metrics);
        Ok(Some((notifier, sender)))
    }

    /// Queues the notification an Event calls for. Never waits: a full queue drops it.
    pub fn notify(&self, object: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        let Some(notification) = Notification::of_event(object, type_, reason, note) else {
            return;
        };
        match self.queue.try_send(notification) {
            Ok(()) => {}
            Err(TrySendError::Full(n) | TrySendError::Closed(n)) => {
                tracing::warn!(
                    kind = n.kind.as_str(),
                    "notification queue full or closed; dropped"
                );
                for sink in self.sinks.iter() {
                    self.metrics.notification(sink.name(), "dropped");
                }
            }
        }
    }
}

/// From `run`'s flags: the notifier and its sender, `None` without a webhook.
pub fn from_args(args: &RunArgs, metrics: Metrics) -> Result<Option<(Notifier, Sender)>> {
    let sinks = sinks(
        args.slack_webhook_url.as_ref(),
        args.notify_webhook_url.as_ref(),
    )?;
    let settings = Settings {
        cluster: args.cluster_name.clone(),
        ..Settings::default()
    };
    Notifier::start(sinks, settings, metrics)
}

/// The sinks the flags ask for, validated. An empty value counts as none (an empty
/// key of the Secret).
pub fn sinks(slack: Option<&WebhookUrl>, webhook: Option<&WebhookUrl>) -> Result<Vec<Sink>> {
    let mut sinks = Vec::new();
    for (url, format, flag) in [
        (slack, Format::Slack, "--slack-webhook-url"),
        (webhook, Format::Generic, "--notify-webhook-url"),
    ] {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            continue;
        };
        url.validate(flag)?;
        sinks.push(Sink {
            format,
            url: url.clone(),
        });
    }
    Ok(sinks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: &str, namespace: Option<&str>, name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some(kind.into()),
            namespace: namespace.map(Into::into),
            name: Some(name.into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn an_event_on_a_node_names_the_node_and_one_on_a_workload_names_the_workload() {
        let n = Notification::of_event(
            &reference("Node", None, "n1"),
            EventType::Warning,
            "SpotInterruption",
            "spot-interruption-warning: tainted",
        )
        .unwrap();
        assert_eq!(n.kind, Kind::Interruption);
        assert_eq!(n.node.as_deref(), Some("n1"));
        assert_eq!(n.type_, "Warning");
        let n = Notification::of_event(
            &reference("Deployment", Some("shop"), "web"),
            EventType::Normal,
            "SurgeRestart",
            "rollout restart",
        )
        .unwrap();
        assert_eq!(n.kind, Kind::SurgeStarted);
        assert_eq!(
            n.object,
            Named {
                kind: "Deployment".into(),
                namespace: Some("shop".into()),
                name: "web".into()
            }
        );
        assert_eq!(n.node, None);
        assert!(
            Notification::of_event(
                &reference("Pod", Some("shop"), "p"),
                EventType::Normal,
                "Pulled",
                ""
            )
            .is_none()
        );
    }

    #[test]
    fn no_url_means_no_notifier_and_a_bad_one_is_refused() {
        let empty = WebhookUrl::from_flag("").unwrap();
        assert!(sinks(None, Some(&empty)).unwrap().is_empty());
        let bad = WebhookUrl::from_flag("not a url/hidden-part").unwrap();
        let error = sinks(Some(&bad), None).unwrap_err().to_string();
        assert!(error.contains("--slack-webhook-url") && !error.contains("hidden-part"));
        let good = WebhookUrl::from_flag("https://example.com/hook").unwrap();
        let both = sinks(Some(&good), Some(&good)).unwrap();
        assert_eq!(
            both.iter().map(|s| s.format).collect::<Vec<_>>(),
            [Format::Slack, Format::Generic]
        );
    }
}
