//! Surging single-replica Deployments, and the scale-back that survives restarts.
//!
//! All state lives in the Deployment's annotations: `spotkube.io/reason` (the event
//! the surge was for: a redelivery surges nothing twice), `surge-from` /
//! `surge-until` (a scaled surge and when it ends). The scale-back is a periodic
//! reconcile over Deployments ([`crate::reconcile::scale_back`]), so a restarted
//! controller picks up where it left off; [`end_surge`] is its write.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use spotkube_shared::annotations::{
    MIGRATED_AT, REASON, STATE, SURGE_FROM, SURGE_UNTIL, WorkloadState,
};

use super::Actor;
use crate::decide::ScaleBack;
use crate::error::{KubeResultExt, Result};

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
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(actor.ctx.client.clone(), namespace);
    let now = Timestamp::now().to_string();
    let patch = json!({
        "metadata": { "annotations": { REASON: reason, MIGRATED_AT: now } },
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: now } } } },
    });
    let deployment = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .kube("patch", format_args!("deployment/{namespace}/{name}"))?;
    tracing::info!("rollout restart to move off the interrupted node");
    actor
        .ctx
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
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(actor.ctx.client.clone(), namespace);
    let object = format!("deployment/{namespace}/{name}");
    let current = api.get(name).await.kube("get", &object)?;
    let replicas = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if replicas != from || current.annotations().contains_key(SURGE_FROM) {
        tracing::info!(replicas, "replicas changed meanwhile; no scaled surge");
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
    // A 409 (changed since the check) is a conflict: the message is redelivered.
    let deployment = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .kube("patch", &object)?;
    tracing::info!(from, to, %until, "scaled surge");
    actor
        .ctx
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

/// Follows a surged Deployment until its replacement is Ready: metric + Event. Runs
/// in the term's tasks, so it stops when leadership ends.
fn follow(actor: Actor, api: Api<Deployment>, name: String, received: Instant) {
    let tasks = actor.tasks.clone();
    tasks.spawn("follow", async move {
        while received.elapsed() < FOLLOW_FOR {
            if let Ok(d) = api.get(&name).await
                && replacement_ready(&d)
            {
                let elapsed = received.elapsed();
                actor
                    .ctx
                    .metrics
                    .receipt_to_replacement_ready
                    .observe(elapsed.as_secs_f64());
                actor
                    .ctx
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

/// Ends a surge whose hold is over, as `decision` says, under the resourceVersion it
/// was decided on. `Ok(None)`: nothing to do, or the Deployment changed meanwhile
/// (the next pass sees the new state).
pub async fn end_surge(
    actor: &Actor,
    deployment: &Deployment,
    decision: ScaleBack,
) -> Result<Option<Deployment>> {
    let mut patch = json!({
        "metadata": {
            "resourceVersion": deployment.metadata.resource_version,
            "annotations": {
                SURGE_FROM: null,
                SURGE_UNTIL: null,
                STATE: WorkloadState::Spot.as_str(),
            },
        },
    });
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let note = match decision {
        ScaleBack::Wait => return Ok(None),
        ScaleBack::ScaleTo { replicas } => {
            patch["spec"] = json!({ "replicas": replicas });
            format!("surge hold over: scaled back to {replicas}")
        }
        ScaleBack::Forget => {
            format!("surge hold over: replicas changed to {replicas} meanwhile, left as they are")
        }
    };
    let namespace = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let api: Api<Deployment> = Api::namespaced(actor.ctx.client.clone(), &namespace);
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(d) => {
            tracing::info!("{note}");
            actor
                .ctx
                .event(&d.object_ref(&()), EventType::Normal, "SurgeEnded", note)
                .await;
            Ok(Some(d))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(crate::Error::kube(
            "patch",
            format_args!("deployment/{namespace}/{name}"),
            e,
        )),
    }
}
