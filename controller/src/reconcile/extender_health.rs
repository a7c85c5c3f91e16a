//! Scheduling without prices: spotkube ships its extender `ignorable: true`, so while
//! the extender is down spotkube's scheduler keeps binding opted-in pods, without the
//! extender's filter (nodes being reclaimed) and price scores. kube-scheduler exports no
//! metric for a skipped extender, and the extender cannot count what it never sees, so
//! the leader probes it (`--extender-url`: a `prioritize` call with no nodes, as the
//! scheduler makes it) and, while it does not answer, counts the pods of spotkube's
//! scheduler bound meanwhile:
//!
//! - `spotkube_controller_extender_up`: 1 when the last probe was answered, else 0;
//! - `spotkube_controller_pods_scheduled_without_extender_total`: pods whose
//!   `PodScheduled` turned True while the extender was down.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tokio_util::sync::CancellationToken;

use crate::context::Context;

/// Where and how often to probe.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The extender's URL prefix, as the scheduler configuration names it.
    pub url: String,
    /// A PEM CA bundle for an HTTPS extender.
    pub ca_pem: Option<Vec<u8>>,
    pub every: Duration,
    /// The scheduler opted-in pods name.
    pub scheduler_name: String,
    /// The counting window, shared by this process's leadership terms.
    pub window: Arc<Mutex<Window>>,
}

/// Since when the extender is down, and the pods already counted in that window. Kept
/// across the leadership terms of one process: a term that ends and starts again (a
/// renewal missed under load) continues the window, where a fresh one would start after
/// pods already bound and never count them.
#[derive(Debug, Default)]
pub struct Window {
    down_since: Option<Timestamp>,
    counted: HashSet<String>,
}

/// When `pod` was bound, if it is.
pub fn bound_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn client(settings: &Settings) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .use_rustls_tls();
    if let Some(pem) = &settings.ca_pem {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
    }
    builder.build()
}

/// Whether the extender answers a `prioritize` call.
async fn probe(http: &reqwest::Client, url: &str) -> bool {
    let args = serde_json::json!({
        "Pod": { "metadata": { "name": "spotkube-controller-probe" } },
        "NodeNames": [],
    });
    match http
        .post(format!("{url}/prioritize"))
        .json(&args)
        .send()
        .await
    {
        Ok(resp) if resp.status().is_success() => true,
        Ok(resp) => {
            tracing::debug!(status = %resp.status(), "extender probe answered with an error");
            false
        }
        Err(error) => {
            tracing::debug!(%error, "extender probe failed");
            false
        }
    }
}

/// Probes until `stop`; counts pods bound while the extender is down.
pub async fn run(ctx: Context, settings: Settings, stop: CancellationToken) {
    let http = match client(&settings) {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "cannot build the extender probe's client");
            stop.cancelled().await;
            return;
        }
    };
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.schedulerName={}", settings.scheduler_name);
    loop {
        let now = Timestamp::now();
        let up = probe(&http, &settings.url).await;
        ctx.metrics.extender_up.set(i64::from(up));
        // No lock is held across an await: each step takes the window briefly.
        let down_since = {
            let mut window = settings.window.lock().expect("window lock");
            if !up && window.down_since.is_none() {
                tracing::warn!(url = %settings.url, "the extender does not answer: pods are scheduled without its filter and prices");
                // Conditions carry whole seconds: start the window at the second.
                window.down_since = Timestamp::from_second(now.as_second()).ok();
            }
            window.down_since
        };
        // While down, and once more when it is back (for the binds since the last look).
        if let Some(since) = down_since {
            match pods.list(&ListParams::default().fields(&selector)).await {
                Ok(list) => {
                    let mut window = settings.window.lock().expect("window lock");
                    for pod in &list.items {
                        let in_window = bound_at(pod).is_some_and(|t| t >= since && t <= now);
                        if in_window && window.counted.insert(pod.uid().unwrap_or_default()) {
                            ctx.metrics.pods_scheduled_without_extender.inc();
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "listing the scheduler's pods failed"),
            }
            if up {
                let mut window = settings.window.lock().expect("window lock");
                tracing::info!(url = %settings.url, unpriced = window.counted.len(), "the extender answers again");
                *window = Window::default();
            }
        }
        if !super::tick(settings.every, &stop).await {
            break;
        }
    }
    ctx.metrics.extender_up.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(condition: Option<(&str, &str)>) -> Pod {
        let conditions = condition.map(|(status, time)| {
            serde_json::json!([{ "type": "PodScheduled", "status": status, "lastTransitionTime": time }])
        });
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p" },
            "status": { "conditions": conditions.unwrap_or(serde_json::json!([])) },
        }))
        .unwrap()
    }

    #[test]
    fn only_a_true_pod_scheduled_condition_says_when_it_was_bound() {
        let t = "2026-12-01T10:00:00Z";
        assert_eq!(
            bound_at(&pod(Some(("True", t)))),
            Some(t.parse::<Timestamp>().unwrap())
        );
        assert_eq!(bound_at(&pod(Some(("False", t)))), None);
        assert_eq!(bound_at(&pod(None)), None);
    }
}
