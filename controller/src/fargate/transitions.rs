//! The transitions applied to the API: each one patch under the resourceVersion it was
//! decided on (a 409 means someone, maybe another leader, wrote first: nothing is
//! applied and the next look decides again), returning what to announce. Both the
//! controller and `spotkube-controller state set` go through here.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::Value;
use spotkube_shared::annotations::WorkloadState;

use super::Settings;
use super::record::{self, FargateRecord, RolloutKind};
use super::step::Verdict;
use crate::act::patch_as_decided;
use crate::context::Context;
use crate::error::{Error, Result};

/// A transition written: the Deployment as it now is, and its Event.
#[derive(Debug, Clone)]
pub struct Done {
    pub deployment: Deployment,
    /// The metric label (see [`super::metrics::FargateMetrics::transitions`]).
    pub transition: &'static str,
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// What a failover request came to.
#[derive(Debug)]
pub enum Failover {
    /// No Fargate profile covers the namespace (or none is configured).
    NotCovered,
    /// Already on Fargate, or its failover in flight: nothing to do.
    Already,
    Done(Box<Done>),
}

/// When the next recovery may start after one more failure.
fn next_attempt(d: &Deployment, settings: &Settings, now: Timestamp) -> Timestamp {
    let wait = record::backoff(
        record::failed_recoveries(d) + 1,
        settings.backoff_base,
        settings.backoff_cap,
    );
    now.checked_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// Moves Deployment `namespace/name` to Fargate because of `reason` (an event's key, or
/// `manual`). A workload on its way back to spot goes back to Fargate instead (its
/// recovery failed: counted, backed off).
pub async fn fail_over(
    client: &Client,
    settings: &Settings,
    namespace: &str,
    name: &str,
    reason: &str,
    now: Timestamp,
) -> Result<Failover> {
    let Some(profile) = settings.profile_for(namespace) else {
        return Ok(Failover::NotCovered);
    };
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    // Which patch the last decision chose (the closure may run again on a conflict).
    let rolled_back = std::sync::atomic::AtomicBool::new(false);
    let patched = patch_as_decided(&api, name, |d| {
        rolled_back.store(false, std::sync::atomic::Ordering::Relaxed);
        match FargateRecord::of(d) {
            Some(Ok(r)) if r.rollout.as_ref().map(|r| r.kind) == Some(RolloutKind::Recovery) => {
                rolled_back.store(true, std::sync::atomic::Ordering::Relaxed);
                let why = format!("recovery interrupted: {reason}");
                Some(record::rollback(
                    d,
                    &r,
                    &why,
                    now,
                    next_attempt(d, settings, now),
                ))
            }
            Some(_) => None,
            None if record::state(d) == Some(WorkloadState::Fargate) => None,
            None => Some(record::failover(d, &profile.labels, reason, now)),
        }
    })
    .await?;
    let Some(deployment) = patched else {
        return Ok(Failover::Already);
    };
    let done = if rolled_back.load(std::sync::atomic::Ordering::Relaxed) {
        Done {
            transition: "rollback",
            type_: EventType::Warning,
            reason: "SpotkubeRecoveryFailed",
            note: format!(
                "back to Fargate: a spot node of its recovery is being reclaimed ({reason}); failed recoveries {}, next attempt after {}",
                record::failed_recoveries(&deployment),
                record::next_recovery(&deployment)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            ),
            deployment,
        }
    } else {
        let labels: Vec<String> = profile
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Done {
            transition: "failover",
            type_: EventType::Normal,
            reason: "SpotkubeFargateFailover",
            note: format!(
                "moving to Fargate ({reason}): pod template labelled {}; old pods serve until the Fargate pods are Ready (maxUnavailable 0)",
                labels.join(",")
            ),
            deployment,
        }
    };
    Ok(Failover::Done(Box::new(done)))
}

/// Starts the way back to spot for `d` (as last read), because of `why`.
pub async fn recover(
    client: &Client,
    d: &Deployment,
    why: &str,
    now: Timestamp,
) -> Result<Option<Done>> {
    let Some(Ok(record)) = FargateRecord::of(d) else {
        return Ok(None);
    };
    let patch = record::recovery(d, &record, why, now);
    Ok(patch_at(client, d, &patch).await?.map(|deployment| Done {
        transition: "recovery",
        type_: EventType::Normal,
        reason: "SpotkubeRecoveryStarted",
        note: format!(
            "back to spot: {why}; Fargate pods serve until the spot pods are Ready (maxUnavailable 0)"
        ),
        deployment,
    }))
}

/// Carries out `verdict` on the rollout in flight of `d`.
pub async fn conclude(
    client: &Client,
    settings: &Settings,
    d: &Deployment,
    record: &FargateRecord,
    verdict: &Verdict,
    without_service: bool,
    now: Timestamp,
) -> Result<Option<Done>> {
    let Some(kind) = record.rollout.as_ref().map(|r| r.kind) else {
        return Ok(None);
    };
    let (patch, transition, type_, reason, note): (Value, _, _, _, String) = match verdict {
        Verdict::Wait => return Ok(None),
        Verdict::Complete => {
            let Some(patch) = record::complete(d, record, now) else {
                return Ok(None);
            };
            let (transition, reason, note) = match kind {
                RolloutKind::Failover => (
                    "failover-complete",
                    "SpotkubeFargateReady",
                    "on Fargate: rollout done and every Service has its ready endpoints; rollout strategy restored",
                ),
                RolloutKind::Abort => (
                    "abort-complete",
                    "SpotkubeFailoverAbortedReady",
                    "back on spot after the failed failover: rollout done; rollout strategy restored",
                ),
                RolloutKind::Recovery => (
                    "recovered",
                    "SpotkubeRecovered",
                    "recovered to spot: rollout done and every Service has its ready endpoints; failed recoveries reset",
                ),
                RolloutKind::Rollback => (
                    "rollback-complete",
                    "SpotkubeRollbackReady",
                    "back on Fargate after the failed recovery: rollout done; rollout strategy restored",
                ),
            };
            let note = if without_service {
                format!("{note} (no Service selects its pods: judged by the rollout alone)")
            } else {
                note.to_string()
            };
            (patch, transition, EventType::Normal, reason, note)
        }
        Verdict::Abort(why) => (
            record::abort(d, record, now),
            "abort",
            EventType::Warning,
            "SpotkubeFargateFailoverFailed",
            format!(
                "failover to Fargate abandoned: {why}; restarted on spot instead (old pods serve until the new ones are Ready)"
            ),
        ),
        Verdict::Rollback(why) => {
            let next = next_attempt(d, settings, now);
            (
                record::rollback(d, record, &format!("recovery failed: {why}"), now, next),
                "rollback",
                EventType::Warning,
                "SpotkubeRecoveryFailed",
                format!(
                    "recovery to spot failed: {why}; back to Fargate, failed recoveries {}, next attempt after {next}",
                    record::failed_recoveries(d) + 1
                ),
            )
        }
    };
    Ok(patch_at(client, d, &patch).await?.map(|deployment| Done {
        deployment,
        transition,
        type_,
        reason,
        note,
    }))
}

/// Patches `d` under the resourceVersion the patch carries; `None` on a conflict.
async fn patch_at(client: &Client, d: &Deployment, patch: &Value) -> Result<Option<Deployment>> {
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
    match Api::<Deployment>::namespaced(client.clone(), &namespace)
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(d) => Ok(Some(d)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(Error::kube(
            "patch",
            format_args!("deployment/{namespace}/{name}"),
            e,
        )),
    }
}

/// The Event, metric and log line of a transition.
pub async fn announce(ctx: &Context, done: &Done) {
    tracing::info!(
        transition = done.transition,
        object = %format!("deployment/{}/{}", done.deployment.namespace().unwrap_or_default(), done.deployment.name_any()),
        "{}", done.note
    );
    ctx.metrics.fargate.transition(done.transition);
    ctx.event(
        &done.deployment.object_ref(&()),
        done.type_,
        done.reason,
        done.note.clone(),
    )
    .await;
}

/// Fails over every `fallback: fargate` Deployment with a pod on Node `node` (a
/// rebalance recommendation spot cannot replace). Failures are logged and counted: the
/// interruption warning, if one follows, asks again.
pub async fn fail_over_node(ctx: &Context, node: &str, reason: &str) {
    let Some(settings) = ctx.fargate.as_deref() else {
        return;
    };
    let pods = match ctx.pods_on(node).await {
        Ok(pods) => pods,
        Err(error) => {
            tracing::warn!(%error, node, "pods not read; no Fargate failover for the rebalance");
            return;
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for pod in pods.iter().filter(|p| {
        !p.done
            && p.policy.enabled
            && p.policy.fallback == spotkube_shared::annotations::Fallback::Fargate
    }) {
        let crate::decide::Owner::Deployment(d) = &pod.owner else {
            continue;
        };
        if !seen.insert((pod.namespace.clone(), d.name.clone())) {
            continue;
        }
        match fail_over(
            &ctx.client,
            settings,
            &pod.namespace,
            &d.name,
            reason,
            Timestamp::now(),
        )
        .await
        {
            Ok(Failover::Done(done)) => announce(ctx, &done).await,
            Ok(Failover::Already) => {}
            Ok(Failover::NotCovered) => ctx.metrics.fargate.transition("not-covered"),
            Err(error) => {
                tracing::warn!(%error, deployment = %d.name, "Fargate failover failed");
                ctx.metrics
                    .action("fargate-failover", "error", error.category());
            }
        }
    }
}
