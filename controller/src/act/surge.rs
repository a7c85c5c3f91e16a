//! Surging single-replica Deployments, and the scale-back that survives restarts.
//!
//! All state lives in the Deployment: the annotations `spotkube.io/reason` (the event
//! the surge was for: a redelivery surges nothing twice), `surge-from` / `surge-until`
//! (a scaled surge and when it ends), and the label `spotkube.io/surging` while a
//! scaled surge is in progress (so the scale-back reconcile
//! [`crate::reconcile::scale_back`] watches only those). A restarted controller picks
//! up where it left off; [`end_surge`] is the reconcile's write.
//!
//! Every surge is a patch under the resourceVersion of the read it was decided on, so
//! a second leader or a stale decision never surges twice: on a 409 the Deployment is
//! read again and the surge decided again.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use spotkube_shared::annotations::{
    MIGRATED_AT, REASON, STATE, SURGE_FROM, SURGE_NODE, SURGE_UNTIL, WorkloadState,
};
use spotkube_shared::labels::{SURGING, SURGING_VALUE};

use super::Actor;
use crate::decide::ScaleBack;
use crate::error::{Error, KubeResultExt, Result};

/// The pod template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// How long to follow a surge for the replacement-Ready metric and Event.
const FOLLOW_FOR: Duration = Duration::from_secs(600);
/// Reads and patches before a surge that keeps conflicting fails as a conflict.
const ATTEMPTS: usize = 5;

/// Whether `d` already shows a surge for `reason`, or a scaled surge still held: its
/// pods are being replaced, nothing is left to do.
fn already_surged(d: &Deployment, reason: &str) -> bool {
    let a = d.annotations();
    a.get(REASON).map(String::as_str) == Some(reason) || a.contains_key(SURGE_FROM)
}

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
    let surged = patch_as_decided(&api, name, |current| {
        if already_surged(current, reason) {
            tracing::info!("already surged; no restart");
            return None;
        }
        let now = Timestamp::now().to_string();
        Some(json!({
            "metadata": { "annotations": { REASON: reason, MIGRATED_AT: now } },
            "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: now } } } },
        }))
    })
    .await?;
    let Some(deployment) = surged else {
        return Ok(());
    };
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

/// A scaled surge: `from` → `to` until `until` (or until Node `node` is gone), for
/// the event `reason`.
pub struct Scaled<'a> {
    pub from: i32,
    pub to: i32,
    pub until: Timestamp,
    pub reason: &'a str,
    pub node: &'a str,
}

/// Scale `from` → `to`, recording when to scale back (and for which Node) and
/// labelling the Deployment as surging, unless its replicas changed meanwhile or it is
/// already surged.
pub async fn scale(
    actor: &Actor,
    namespace: &str,
    name: &str,
    surge: Scaled<'_>,
    received: Instant,
) -> Result<()> {
    let Scaled {
        from,
        to,
        until,
        reason,
        node,
    } = surge;
    let api: Api<Deployment> = Api::namespaced(actor.ctx.client.clone(), namespace);
    let surged = patch_as_decided(&api, name, |current| {
        let replicas = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        if already_surged(current, reason) {
            tracing::info!("already surged; no scaled surge");
            return None;
        }
        if replicas != from {
            tracing::info!(replicas, "replicas changed meanwhile; no scaled surge");
            return None;
        }
        Some(json!({
            "metadata": {
                "labels": { SURGING: SURGING_VALUE },
                "annotations": {
                    REASON: reason,
                    STATE: WorkloadState::Surging.as_str(),
                    SURGE_FROM: from.to_string(),
                    SURGE_UNTIL: until.to_string(),
                    SURGE_NODE: node,
                },
            },
            "spec": { "replicas": to },
        }))
    })
    .await?;
    let Some(deployment) = surged else {
        return Ok(());
    };
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

/// Reads Deployment `name`, asks `decide` what to patch given what it shows now
/// (`None`: nothing, e.g. already surged), and patches under the resourceVersion of
/// that read. A 409 means someone wrote in between: read and decide again.
/// `Ok(None)`: nothing was patched (nothing to do, or the Deployment is gone).
pub async fn patch_as_decided(
    api: &Api<Deployment>,
    name: &str,
    decide: impl Fn(&Deployment) -> Option<Value>,
) -> Result<Option<Deployment>> {
    let object = format!("deployment/{}/{name}", api.namespace().unwrap_or_default());
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let Some(current) = api.get_opt(name).await.kube("get", &object)? else {
            tracing::info!("deployment gone; no surge");
            return Ok(None);
        };
        let Some(mut patch) = decide(&current) else {
            return Ok(None);
        };
        patch["metadata"]["resourceVersion"] = json!(current.metadata.resource_version);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(patched) => return Ok(Some(patched)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(message = %status.message, "changed since read; deciding again");
                last = status.message;
            }
            Err(e) => return Err(Error::kube("patch", &object, e)),
        }
    }
    Err(Error::Conflict {
        object,
        message: format!("still conflicting after {ATTEMPTS} attempts: {last}"),
    })
}

/// Follows a surged Deployment until its replacement is Ready: metric + Event. A watch
/// on that one Deployment (field selector on its name) rather than polling: one list
/// and one long-lived request, however long the rollout takes. Runs in the term's
/// tasks, so it stops when leadership ends.
fn follow(actor: Actor, api: Api<Deployment>, name: String, received: Instant) {
    let tasks = actor.tasks.clone();
    tasks.spawn("follow", async move {
        let namespace = api.namespace().unwrap_or_default().to_string();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let ready = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .filter_map(|d| async move { d.ok().filter(replacement_ready) });
        let mut ready = std::pin::pin!(ready);
        let left = FOLLOW_FOR.saturating_sub(received.elapsed());
        let ready = tokio::time::timeout(left, ready.next()).await;
        // The drain an eviction guard held may go on now (or, past the follow, at the
        // guard's own expiry: released here all the same).
        if actor.take_guard(&namespace, &name)
            && let Err(error) = super::guard::release(&actor, &namespace, &name).await
        {
            tracing::warn!(%error, "eviction guard not removed; it expires on its own");
        }
        let Ok(Some(d)) = ready else {
            tracing::info!("replacement not Ready within {FOLLOW_FOR:?}; no longer followed");
            return;
        };
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
    });
}

/// The rollout is done as `kubectl rollout status` judges it: observed, every desired
/// replica updated, no old replica left, and every updated one available. (Available
/// replicas alone would count the old pod: a restart's replacement still Pending
/// would pass for Ready.)
pub fn replacement_ready(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (d.spec.as_ref(), d.status.as_ref()) else {
        return false;
    };
    let desired = spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    status.observed_generation >= d.metadata.generation
        && updated >= desired
        && status.replicas.unwrap_or(0) <= updated
        && status.available_replicas.unwrap_or(0) >= updated
}

/// Ends a surge whose hold is over, as `decision` says, under the resourceVersion it
/// was decided on; the surging label goes in the same write. `Ok(None)`: nothing to
/// do, or the Deployment changed meanwhile (the next pass sees the new state).
pub async fn end_surge(
    actor: &Actor,
    deployment: &Deployment,
    decision: ScaleBack,
) -> Result<Option<Deployment>> {
    let mut patch = json!({
        "metadata": {
            "resourceVersion": deployment.metadata.resource_version,
            "labels": { SURGING: null },
            "annotations": {
                SURGE_FROM: null,
                SURGE_UNTIL: null,
                SURGE_NODE: null,
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
        ScaleBack::DropLabel => {
            // No surge on record: only the label goes, the rest is not spotkube's.
            patch = json!({
                "metadata": {
                    "resourceVersion": deployment.metadata.resource_version,
                    "labels": { SURGING: null },
                },
            });
            "labelled as surging without a surge on record: label removed".to_string()
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
        Err(e) => Err(Error::kube(
            "patch",
            format_args!("deployment/{namespace}/{name}"),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, updated: i32, available: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "web", "generation": 2 },
            "spec": { "replicas": 1, "selector": {}, "template": {} },
            "status": {
                "observedGeneration": 2, "replicas": replicas,
                "updatedReplicas": updated, "availableReplicas": available,
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_restart_is_done_once_the_old_pod_is_gone_and_the_new_one_available() {
        // The replacement is created but Pending; the old pod is still available.
        assert!(!replacement_ready(&deployment(2, 1, 1)));
        // Both available, the old one not yet gone.
        assert!(!replacement_ready(&deployment(2, 1, 2)));
        assert!(replacement_ready(&deployment(1, 1, 1)));
    }
}
