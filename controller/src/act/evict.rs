//! Eviction through the Eviction API, so PodDisruptionBudgets are respected: a 429
//! (budget exhausted) is retried until the deadline.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::EvictParams;
use kube::runtime::events::EventType;
use kube::{Api, Resource};

use super::Actor;

/// Without a deadline (early evictions), how long to keep retrying.
const DEFAULT_PATIENCE: Duration = Duration::from_secs(600);
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Evicts until done or the deadline passes; records the outcome.
pub async fn evict_until(actor: &Actor, namespace: &str, name: &str, deadline: Option<Timestamp>) {
    let outcome = try_evict(actor, namespace, name, deadline).await;
    actor.ctx.metrics.action("evict-done", outcome, "none");
}

async fn try_evict(
    actor: &Actor,
    namespace: &str,
    name: &str,
    deadline: Option<Timestamp>,
) -> &'static str {
    let pods: Api<Pod> = Api::namespaced(actor.ctx.client.clone(), namespace);
    let give_up = deadline.unwrap_or_else(|| {
        Timestamp::now()
            .checked_add(DEFAULT_PATIENCE)
            .unwrap_or(Timestamp::MAX)
    });
    loop {
        match pods.evict(name, &EvictParams::default()).await {
            Ok(_) => {
                tracing::info!("pod evicted");
                if let Ok(Some(pod)) = pods.get_opt(name).await {
                    actor
                        .ctx
                        .event(
                            &pod.object_ref(&()),
                            EventType::Normal,
                            "Evicted",
                            "evicted by spotkube: its node is being interrupted".into(),
                        )
                        .await;
                }
                return "evicted";
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return "gone",
            Err(kube::Error::Api(s)) if s.code == 429 => {
                tracing::debug!("eviction blocked by a PodDisruptionBudget; retrying");
            }
            Err(error) => {
                tracing::warn!(%error, "eviction failed; retrying")
            }
        }
        if Timestamp::now() >= give_up {
            tracing::warn!("eviction deadline passed");
            return "deadline";
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
