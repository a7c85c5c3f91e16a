//! Surging single-replica Deployments, and the scale-back that survives restarts.
//!
//! All state lives in the Deployment's annotations: `spotkube.io/reason` (the event
//! the surge was for: a redelivery surges nothing twice), `surge-from` /
//! `surge-until` (a scaled surge and when it ends). The scale-back is a periodic
//! reconcile over Deployments, so a restarted controller picks up where it left off.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use spotkube_shared::annotations::{
    MIGRATED_AT, REASON, STATE, SURGE_FROM, SURGE_UNTIL, WorkloadState,
};
use tokio_util::sync::CancellationToken;

use super::{ActError, Actor};
use crate::decide::{self, ScaleBack};

/// The pod template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// How long to follow a surge for the replacement-Ready metric and Event.
const FOLLOW_FOR: Duration = Duration::from_secs(600);

/// Rollout restart: the strategy surges, so the replacement is Ready before the old
/// pod goes.
pub async fn restart(
    actor: &Actor,
    namespace: &str,
    name: &str,
    reason: &str,
    received: Instant,
) -> Result<(), ActError> {
    let api: Api<Deployment> = Api::namespaced(actor.client.clone(), namespace);
    let now = Timestamp::now().to_string();
    let patch = json!({
        "metadata": { "annotations": { REASON: reason, MIGRATED_AT: now } },
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: now } } } },
    });
    let deployment = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(
        namespace,
        deployment = name,
        "rollout restart to move off the interrupted node"
    );
    actor
        .event(
            &deployment.object_ref(&()),
            EventType::Normal,
            "SurgeRestart",
            format!("rollout restart: its node is being interrupted (event {reason})"),
        )
        .await;
    follow(actor.clone(), api, name.to_string(), received);
    Ok(())
}

/// Scale `from` → `to`, recording when to scale back. Done under the resourceVersion
/// the check was made on, so a concurrent change of replicas wins.
#[allow(clippy::too_many_arguments)]
pub async fn scale(
    actor: &Actor,
    namespace: &str,
    name: &str,
    from: i32,
    to: i32,
    until: Timestamp,
    reason: &str,
    received: Instant,
) -> Result<(), ActError> {
    let api: Api<Deployment> = Api::namespaced(actor.client.clone(), namespace);
    let current = api.get(name).await?;
    let replicas = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if replicas != from || current.annotations().contains_key(SURGE_FROM) {
        tracing::info!(
            namespace,
            deployment = name,
            replicas,
            "replicas changed meanwhile; no scaled surge"
        );
        return Ok(());
    }
    let patch = json!({
        "metadata": {
            "resourceVersion": current.metadata.resource_version,
            "annotations": {
                REASON: reason,
                STATE: WorkloadState::Surging.as_str(),
                SURGE_FROM: from.to_string(),
                SURGE_UNTIL: until.to_string(),
            },
        },
        "spec": { "replicas": to },
    });
    let deployment = match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(d) => d,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Err(ActError::Conflict(format!(
                "deployment {namespace}/{name} changed while surging"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(namespace, deployment = name, from, to, %until, "scaled surge");
    actor
        .event(
            &deployment.object_ref(&()),
            EventType::Normal,
            "SurgeScale",
            format!(
                "scaled {from}→{to} until {until}: its node is being interrupted (event {reason})"
            ),
        )
        .await;
    follow(actor.clone(), api, name.to_string(), received);
    Ok(())
}

/// Follows a surged Deployment until its replacement is Ready: metric + Event.
fn follow(actor: Actor, api: Api<Deployment>, name: String, received: Instant) {
    tokio::spawn(async move {
        while received.elapsed() < FOLLOW_FOR {
            if let Ok(d) = api.get(&name).await
                && replacement_ready(&d)
            {
                let elapsed = received.elapsed();
                actor
                    .metrics
                    .receipt_to_replacement_ready
                    .observe(elapsed.as_secs_f64());
                actor
                    .event(
                        &d.object_ref(&()),
                        EventType::Normal,
                        "ReplacementReady",
                        format!(
                            "replacement Ready {:.1}s after the event was received",
                            elapsed.as_secs_f64()
                        ),
                    )
                    .await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

/// The rollout is observed and every desired replica is updated and available.
fn replacement_ready(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (d.spec.as_ref(), d.status.as_ref()) else {
        return false;
    };
    let desired = spec.replicas.unwrap_or(1);
    status.observed_generation >= d.metadata.generation
        && status.updated_replicas.unwrap_or(0) >= desired
        && status.available_replicas.unwrap_or(0) >= desired
}

/// One pass of the scale-back reconcile over every Deployment carrying `surge-from`.
pub async fn scale_back_once(actor: &Actor) -> Result<(), ActError> {
    let api: Api<Deployment> = Api::all(actor.client.clone());
    let now = Timestamp::now();
    for d in api.list(&ListParams::default()).await? {
        let a = d.annotations();
        let (Some(from), Some(until)) = (
            a.get(SURGE_FROM).and_then(|v| v.parse::<i32>().ok()),
            a.get(SURGE_UNTIL).and_then(|v| v.parse::<Timestamp>().ok()),
        ) else {
            continue;
        };
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let decision = decide::scale_back(from, until, replicas, now);
        let mut patch = json!({
            "metadata": {
                "resourceVersion": d.metadata.resource_version,
                "annotations": {
                    SURGE_FROM: null,
                    SURGE_UNTIL: null,
                    STATE: WorkloadState::Spot.as_str(),
                },
            },
        });
        let note = match decision {
            ScaleBack::Wait => continue,
            ScaleBack::ScaleTo { replicas } => {
                patch["spec"] = json!({ "replicas": replicas });
                format!("surge hold over: scaled back to {replicas}")
            }
            ScaleBack::Forget => {
                format!(
                    "surge hold over: replicas changed to {replicas} meanwhile, left as they are"
                )
            }
        };
        let namespace = d.namespace().unwrap_or_default();
        let api: Api<Deployment> = Api::namespaced(actor.client.clone(), &namespace);
        match api
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(d) => {
                tracing::info!(namespace, deployment = %d.name_any(), "{note}");
                actor.metrics.action("scale-back", "ok");
                actor
                    .event(&d.object_ref(&()), EventType::Normal, "SurgeEnded", note)
                    .await;
            }
            // Changed since listed: the next pass sees the new state.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                actor.metrics.action("scale-back", "error");
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// The scale-back reconcile, every `every`, until cancelled.
pub async fn run_scale_back(actor: Actor, every: Duration, stop: CancellationToken) {
    loop {
        if let Err(error) = scale_back_once(&actor).await {
            tracing::warn!(%error, "scale-back pass failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
