//! Eviction through the Eviction API, so PodDisruptionBudgets are respected: a 429
//! (budget exhausted) is retried until the deadline.
//!
//! One 429 is not the budget's doing: an eviction the budget granted whose delete never
//! ran, because the client that asked died between the two (a leader killed mid-drain
//! cancels its requests). The API server has already counted that pod in the PDB's
//! `status.disruptedPods`, and the disruption controller keeps it there for two minutes
//! (its DeletionTimeout) while the pod runs on: every eviction in the budget answers
//! 429 for most of a spot warning. The budget was spent on that very pod, so spotkube
//! finishes the granted eviction by deleting it, and breaches nothing.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, ListParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::Actor;

/// Without a deadline (early evictions), how long to keep retrying.
const DEFAULT_PATIENCE: Duration = Duration::from_secs(600);
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// One eviction request may not hold the drain longer than this: the client's own read
/// timeout (295 s) is longer than a spot warning.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a granted eviction may wait for its delete before spotkube finishes it: the
/// API server deletes within milliseconds of the grant, so older is an orphan.
const GRANT_ORPHANED_AFTER: SignedDuration = SignedDuration::from_secs(10);

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
    let pods: Api<Pod> = Api::namespaced(actor.ctx.evictions.clone(), namespace);
    let give_up = deadline.unwrap_or_else(|| {
        Timestamp::now()
            .checked_add(DEFAULT_PATIENCE)
            .unwrap_or(Timestamp::MAX)
    });
    loop {
        let params = EvictParams::default();
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, pods.evict(name, &params));
        let Ok(answer) = attempt.await else {
            tracing::warn!(timeout = ?ATTEMPT_TIMEOUT, "eviction request unanswered; retrying");
            if Timestamp::now() >= give_up {
                return "deadline";
            }
            continue;
        };
        match answer {
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
                match finish_orphaned_grant(actor, &pods, namespace, name).await {
                    Ok(true) => return "granted-deleted",
                    Ok(false) => {
                        tracing::debug!("eviction blocked by a PodDisruptionBudget; retrying")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "orphaned eviction check failed; retrying")
                    }
                }
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

/// Deletes pod `name` when a PodDisruptionBudget of its namespace granted its eviction
/// more than [`GRANT_ORPHANED_AFTER`] ago and the pod is still not terminating (see the
/// module comment). Returns whether it did.
async fn finish_orphaned_grant(
    actor: &Actor,
    pods: &Api<Pod>,
    namespace: &str,
    name: &str,
) -> Result<bool, kube::Error> {
    let Some(pod) = pods.get_opt(name).await? else {
        return Ok(false);
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(actor.ctx.client.clone(), namespace);
    let Some(granted) = orphaned_grant(
        &budgets.list(&ListParams::default()).await?.items,
        name,
        Timestamp::now(),
    ) else {
        return Ok(false);
    };
    let uid = pod.uid();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => {}
        // Gone or replaced meanwhile: nothing left to finish.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(false),
        Err(error) => return Err(error),
    }
    tracing::info!(budget = %granted, "eviction granted but never carried out: pod deleted");
    actor
        .ctx
        .metrics
        .action("evict-orphaned-grant", "deleted", "none");
    actor
        .ctx
        .event(
            &pod.object_ref(&()),
            EventType::Normal,
            "EvictionCompleted",
            format!(
                "deleted by spotkube: PodDisruptionBudget {granted} granted this pod's eviction, \
                 whose delete never ran (its client died mid-request); its node is being interrupted"
            ),
        )
        .await;
    Ok(true)
}

/// The name of a budget among `budgets` that lists pod `name` as disrupted since
/// before `now - GRANT_ORPHANED_AFTER`.
fn orphaned_grant(budgets: &[PodDisruptionBudget], name: &str, now: Timestamp) -> Option<String> {
    let cutoff = now.checked_sub(GRANT_ORPHANED_AFTER).ok()?;
    budgets
        .iter()
        .find(|pdb| {
            pdb.status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .and_then(|d| d.get(name))
                .is_some_and(|granted| granted.0 < cutoff)
        })
        .map(|pdb| pdb.name_any())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::policy::v1::PodDisruptionBudgetStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn budget(name: &str, disrupted: &[(&str, Timestamp)]) -> PodDisruptionBudget {
        let mut pdb = PodDisruptionBudget::default();
        pdb.metadata.name = Some(name.into());
        pdb.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(
                disrupted
                    .iter()
                    .map(|(pod, at)| (pod.to_string(), Time(*at)))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..PodDisruptionBudgetStatus::default()
        });
        pdb
    }

    #[test]
    fn only_a_grant_older_than_the_cutoff_for_this_pod_is_orphaned() {
        let now: Timestamp = "2026-12-01T16:00:00Z".parse().unwrap();
        let old = now.checked_sub(SignedDuration::from_secs(11)).unwrap();
        let fresh = now.checked_sub(SignedDuration::from_secs(2)).unwrap();
        let budgets = [
            budget("fresh", &[("a", fresh)]),
            budget("other", &[("b", old)]),
            PodDisruptionBudget::default(),
        ];
        assert_eq!(
            orphaned_grant(&budgets, "a", now),
            None,
            "a delete may still follow"
        );
        assert_eq!(
            orphaned_grant(&budgets, "c", now),
            None,
            "no budget granted it"
        );
        assert_eq!(orphaned_grant(&budgets, "b", now).as_deref(), Some("other"));
    }
}
