//! Where notifications go and in what shape: a Slack incoming webhook (`{"text"}` in
//! mrkdwn) or a generic JSON webhook (the object documented in the README), posted
//! with retries on 5xx, 429 and transport errors.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};

use super::Notification;
use super::secret::WebhookUrl;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Slack,
    Generic,
}

impl Format {
    /// The `sink` label of the metric.
    pub fn name(self) -> &'static str {
        match self {
            Format::Slack => "slack",
            Format::Generic => "webhook",
        }
    }
}

/// One receiver. `Debug` shows the URL redacted.
#[derive(Clone, Debug)]
pub struct Sink {
    pub format: Format,
    pub url: WebhookUrl,
}

/// How hard to try one post.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts: usize,
    /// The wait before the first retry; it doubles after each.
    pub first_delay: Duration,
    /// Per attempt.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
    /// Without the URL: reqwest's error would print it.
    #[error("could not reach the receiver: {0}")]
    Transport(reqwest::Error),
}

impl PostError {
    /// Worth another attempt: the receiver may recover. A 4xx other than 429 will not.
    fn retryable(&self) -> bool {
        match self {
            PostError::Status(status) => {
                status.is_server_error() || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            PostError::Transport(_) => true,
        }
    }
}

impl Sink {
    /// The body announcing `n`.
    pub fn payload(&self, n: &Notification, cluster: Option<&str>) -> Value {
        match self.format {
            Format::Slack => json!({ "text": slack_text(n, cluster) }),
            Format::Generic => json!({
                "kind": n.kind.as_str(),
                "reason": n.reason,
                "type": n.type_,
                "object": {
                    "kind": n.object.kind,
                    "namespace": n.object.namespace,
                    "name": n.object.name,
                },
                "node": n.node,
                "message": n.message,
                "time": n.time.to_string(),
                "cluster": cluster,
            }),
        }
    }

    /// The body saying `count` notifications were held back by the rate limit.
    pub fn summary(&self, count: u64, cluster: Option<&str>, time: jiff::Timestamp) -> Value {
        let message = format!("{count} notification(s) suppressed by the rate limit");
        match self.format {
            Format::Slack => json!({
                "text": format!(":mute: {}{}", escape(&message), in_cluster(cluster)),
            }),
            Format::Generic => json!({
                "kind": "suppressed",
                "count": count,
                "message": message,
                "time": time.to_string(),
                "cluster": cluster,
            }),
        }
    }

    /// Posts `body`, retrying what may succeed later.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        body: &Value,
        retry: Retry,
    ) -> Result<(), PostError> {
        let once = || async {
            let response = client
                .post(self.url.expose())
                .timeout(retry.timeout)
                .json(body)
                .send()
                .await
                .map_err(|e| PostError::Transport(e.without_url()))?;
            match response.status() {
                status if status.is_success() => Ok(()),
                status => Err(PostError::Status(status)),
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(retry.first_delay)
            .with_max_times(retry.attempts.saturating_sub(1));
        once.retry(backoff)
            .when(PostError::retryable)
            .notify(|error, after| {
                tracing::debug!(sink = self.format.name(), %error, ?after, "notification post failed; retrying");
            })
            .await
    }
}

fn slack_text(n: &Notification, cluster: Option<&str>) -> String {
    let object = match &n.object.namespace {
        Some(namespace) => format!("{} `{namespace}/{}`", n.object.kind, n.object.name),
        None => format!("{} `{}`", n.object.kind, n.object.name),
    };
    let node = match &n.node {
        Some(node) if n.object.kind != "Node" => format!(" on node `{node}`"),
        _ => String::new(),
    };
    format!(
        "*{}*: {}{}{}\n{}",
        n.kind.title(),
        escape(&object),
        escape(&node),
        in_cluster(cluster),
        escape(&n.message)
    )
}

fn in_cluster(cluster: Option<&str>) -> String {
    cluster
        .map(|c| format!(" (cluster `{}`)", escape(c)))
        .unwrap_or_default()
}

/// Slack's mrkdwn reserves `&`, `<` and `>`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
