//! What spotkube writes on a Deployment it moves to Fargate and back, and the merge
//! patches of each transition. Pure: the Deployment as read in, the patch out, so every
//! transition is written in one request under the resourceVersion it was decided on
//! (a second leader, or a stale decision, conflicts instead of rolling twice).
//!
//! The transitions, each one patch:
//!
//! | transition | from → to | template | rollout kind |
//! | --- | --- | --- | --- |
//! | failover | spot → fargate | + profile labels | `failover` |
//! | abort (Fargate cannot start it) | fargate → spot | labels restored + restartedAt | `abort` |
//! | recovery | fargate → recovering | labels restored | `recovery` |
//! | rollback (recovery unhealthy) | recovering → fargate | + profile labels | `rollback` |
//! | complete | the rollout is healthy | unchanged | none (strategy restored) |
//!
//! While a rollout is in flight its `maxUnavailable` is 0, so old pods serve until the
//! new ones are Ready; the strategy the user had is kept in the record and restored by
//! `complete`. The template a workload returns to is the one it left: the labels
//! spotkube added are removed, and any value the user had under those keys put back.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spotkube_shared::annotations::{
    FAILED_RECOVERIES, FARGATE_COOLDOWN, FARGATE_RECORD, MIGRATED_AT, NEXT_RECOVERY, REASON, STATE,
    WorkloadState,
};
use spotkube_shared::labels::{FARGATE_WORKLOAD, FARGATE_WORKLOAD_VALUE};

use crate::act::RESTARTED_AT;

/// The `spotkube.io/fargate` annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FargateRecord {
    /// The profile labels spotkube added to the pod template.
    pub labels: BTreeMap<String, String>,
    /// The template's values under those keys before (`None`: absent).
    #[serde(default)]
    pub before: BTreeMap<String, Option<String>>,
    /// The rollout in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A rollout spotkube started and follows until it is healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub kind: RolloutKind,
    pub started: Timestamp,
    /// `spec.strategy` as it was before spotkube set `maxUnavailable: 0`.
    pub strategy: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutKind {
    /// spot → Fargate.
    Failover,
    /// A failover Fargate could not start: back to spot with a restart, so the pods
    /// leave the reclaimed node all the same.
    Abort,
    /// Fargate → spot.
    Recovery,
    /// A recovery that did not become healthy: back to Fargate.
    Rollback,
}

impl RolloutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutKind::Failover => "failover",
            RolloutKind::Abort => "abort",
            RolloutKind::Recovery => "recovery",
            RolloutKind::Rollback => "rollback",
        }
    }

    /// Whether the rollout brings pods to Fargate.
    pub fn to_fargate(self) -> bool {
        matches!(self, RolloutKind::Failover | RolloutKind::Rollback)
    }
}

/// A `spotkube.io/fargate` annotation that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("annotation {FARGATE_RECORD}: {0}")]
pub struct InvalidRecord(#[from] serde_json::Error);

impl FargateRecord {
    pub fn of(d: &Deployment) -> Option<Result<FargateRecord, InvalidRecord>> {
        d.annotations()
            .get(FARGATE_RECORD)
            .map(|v| Ok(serde_json::from_str(v)?))
    }

    fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("record serializes")
    }
}

/// The workload facts the transitions read.
pub fn state(d: &Deployment) -> Option<WorkloadState> {
    d.annotations().get(STATE).and_then(|s| s.parse().ok())
}

pub fn failed_recoveries(d: &Deployment) -> u32 {
    d.annotations()
        .get(FAILED_RECOVERIES)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn migrated_at(d: &Deployment) -> Option<Timestamp> {
    d.annotations()
        .get(MIGRATED_AT)
        .and_then(|v| v.parse().ok())
}

pub fn next_recovery(d: &Deployment) -> Option<Timestamp> {
    d.annotations()
        .get(NEXT_RECOVERY)
        .and_then(|v| v.parse().ok())
}

/// The workload's own cooldown (`spotkube.io/fargate-cooldown`), else `default`.
pub fn cooldown(d: &Deployment, default: Duration) -> Duration {
    d.annotations()
        .get(FARGATE_COOLDOWN)
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(default)
}

/// The wait before the next recovery once `failures` recoveries failed in a row:
/// `base × 2^failures` (the first failure waits base × 2), capped at `cap`.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 2u32.checked_pow(failures).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

fn template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn strategy(d: &Deployment) -> Value {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .map(|s| serde_json::to_value(s).expect("strategy serializes"))
        .unwrap_or(Value::Null)
}

/// The strategy of a rollout that keeps every old pod until its replacement is Ready:
/// the user's `maxSurge` when it surges at all, else 25 %; `maxUnavailable: 0`.
fn zero_unavailable(saved: &Value) -> Value {
    let surge = saved
        .pointer("/rollingUpdate/maxSurge")
        .filter(|s| !matches!(s, Value::Number(n) if n.as_i64() == Some(0)))
        .filter(|s| !matches!(s, Value::String(p) if p.trim() == "0%" || p.trim() == "0"))
        .cloned()
        .unwrap_or(json!("25%"));
    json!({ "type": "RollingUpdate", "rollingUpdate": { "maxSurge": surge, "maxUnavailable": 0 } })
}

/// The merge patch that puts `saved` back (a Recreate strategy has no rollingUpdate).
fn restore(saved: &Value) -> Value {
    match saved.get("type").and_then(Value::as_str) {
        Some("Recreate") => json!({ "type": "Recreate", "rollingUpdate": null }),
        // No strategy on record (the API server always defaults one): its default.
        _ if saved.is_null() => json!({
            "type": "RollingUpdate",
            "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" },
        }),
        _ => saved.clone(),
    }
}

/// Merge-patch labels: `set` on top, keys of `before` put back as they were.
fn labels_set(labels: &BTreeMap<String, String>) -> Value {
    Value::Object(labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn labels_restored(before: &BTreeMap<String, Option<String>>) -> Value {
    Value::Object(
        before
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, |v| json!(v))))
            .collect(),
    )
}

fn with_version(d: &Deployment, mut patch: Value) -> Value {
    patch["metadata"]["resourceVersion"] = json!(d.metadata.resource_version);
    patch
}

/// spot → Fargate: the profile's labels on the template, the record, state `fargate`.
pub fn failover(
    d: &Deployment,
    profile_labels: &BTreeMap<String, String>,
    reason: &str,
    now: Timestamp,
) -> Value {
    let current = template_labels(d);
    let saved = strategy(d);
    let record = FargateRecord {
        labels: profile_labels.clone(),
        before: profile_labels
            .keys()
            .map(|k| (k.clone(), current.get(k).cloned()))
            .collect(),
        rollout: Some(Rollout {
            kind: RolloutKind::Failover,
            started: now,
            strategy: saved.clone(),
        }),
    };
    with_version(
        d,
        json!({
            "metadata": {
                "labels": { FARGATE_WORKLOAD: FARGATE_WORKLOAD_VALUE },
                "annotations": {
                    STATE: WorkloadState::Fargate.as_str(),
                    MIGRATED_AT: now.to_string(),
                    REASON: reason,
                    FARGATE_RECORD: record.to_annotation(),
                },
            },
            "spec": {
                "strategy": zero_unavailable(&saved),
                "template": { "metadata": { "labels": labels_set(profile_labels) } },
            },
        }),
    )
}

/// `record` turned around into a rollout of `kind` from `now`, keeping the strategy the
/// user had (saved by the rollout it turns around).
fn turned_around(
    d: &Deployment,
    record: &FargateRecord,
    kind: RolloutKind,
    now: Timestamp,
) -> FargateRecord {
    let strategy = record
        .rollout
        .as_ref()
        .map(|r| r.strategy.clone())
        .unwrap_or_else(|| strategy(d));
    FargateRecord {
        rollout: Some(Rollout {
            kind,
            started: now,
            strategy,
        }),
        ..record.clone()
    }
}

/// A failover Fargate could not start: the template's labels as they were, restarted so
/// new pods land on spot, state `spot`. The old strategy stays saved until it is done.
/// `reason` stays the event's: the drain reconcile, deciding again for the same event,
/// must not fail over again.
pub fn abort(d: &Deployment, record: &FargateRecord, now: Timestamp) -> Value {
    let record = turned_around(d, record, RolloutKind::Abort, now);
    with_version(
        d,
        json!({
            "metadata": { "annotations": {
                STATE: WorkloadState::Spot.as_str(),
                FARGATE_RECORD: record.to_annotation(),
            } },
            "spec": { "template": { "metadata": {
                "labels": labels_restored(&record.before),
                "annotations": { RESTARTED_AT: now.to_string() },
            } } },
        }),
    )
}

/// Fargate → spot: the template's labels as they were, state `recovering`.
pub fn recovery(d: &Deployment, record: &FargateRecord, why: &str, now: Timestamp) -> Value {
    let saved = strategy(d);
    let mut record = record.clone();
    record.rollout = Some(Rollout {
        kind: RolloutKind::Recovery,
        started: now,
        strategy: saved.clone(),
    });
    with_version(
        d,
        json!({
            "metadata": { "annotations": {
                STATE: WorkloadState::Recovering.as_str(),
                REASON: why,
                FARGATE_RECORD: record.to_annotation(),
            } },
            "spec": {
                "strategy": zero_unavailable(&saved),
                "template": { "metadata": { "labels": labels_restored(&record.before) } },
            },
        }),
    )
}

/// A recovery that did not become healthy: back to Fargate, one more failure on record
/// and the next attempt after [`backoff`].
pub fn rollback(
    d: &Deployment,
    record: &FargateRecord,
    why: &str,
    now: Timestamp,
    next: Timestamp,
) -> Value {
    let record = turned_around(d, record, RolloutKind::Rollback, now);
    with_version(
        d,
        json!({
            "metadata": { "annotations": {
                STATE: WorkloadState::Fargate.as_str(),
                REASON: why,
                FAILED_RECOVERIES: (failed_recoveries(d) + 1).to_string(),
                NEXT_RECOVERY: next.to_string(),
                FARGATE_RECORD: record.to_annotation(),
            } },
            "spec": { "template": { "metadata": { "labels": labels_set(&record.labels) } } },
        }),
    )
}

/// The rollout in flight is healthy: its strategy restored; after a recovery (or an
/// abort) spotkube's record and label go, and the failures with them.
pub fn complete(d: &Deployment, record: &FargateRecord, now: Timestamp) -> Option<Value> {
    let rollout = record.rollout.as_ref()?;
    let strategy = restore(&rollout.strategy);
    let patch = if rollout.kind.to_fargate() {
        let record = FargateRecord {
            rollout: None,
            ..record.clone()
        };
        json!({
            "metadata": { "annotations": { FARGATE_RECORD: record.to_annotation() } },
            "spec": { "strategy": strategy },
        })
    } else {
        let mut annotations = json!({
            FARGATE_RECORD: null,
            NEXT_RECOVERY: null,
            STATE: WorkloadState::Spot.as_str(),
        });
        if rollout.kind == RolloutKind::Recovery {
            annotations[FAILED_RECOVERIES] = Value::Null;
            annotations[MIGRATED_AT] = json!(now.to_string());
        }
        json!({
            "metadata": {
                "labels": { FARGATE_WORKLOAD: null },
                "annotations": annotations,
            },
            "spec": { "strategy": strategy },
        })
    };
    Some(with_version(d, patch))
}

/// When the workload may next try spot: the later of its cooldown's end and its
/// backoff's.
pub fn recovery_due(d: &Deployment, default_cooldown: Duration) -> Option<Timestamp> {
    let cooled = migrated_at(d)?
        .checked_add(SignedDuration::try_from(cooldown(d, default_cooldown)).ok()?)
        .ok()?;
    Some(next_recovery(d).map_or(cooled, |next| next.max(cooled)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A Deployment as the API server returns it: strategy defaulted, a user label on the
    /// template, nodeSelector and tolerations of the user's.
    fn deployment(strategy: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "web", "namespace": "shop", "resourceVersion": "7",
                          "annotations": { "team": "a" } },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": "web" } },
                "strategy": strategy,
                "template": {
                    "metadata": { "labels": { "app": "web", "tier": "front" } },
                    "spec": {
                        "nodeSelector": { "disk": "ssd" },
                        "tolerations": [{ "key": "dedicated", "operator": "Exists" }],
                        "containers": [{ "name": "web", "image": "nginx" }],
                    },
                },
            },
        }))
        .unwrap()
    }

    /// Applies a merge patch the way the API server does (resourceVersion aside).
    fn apply(d: &Deployment, patch: &Value) -> Deployment {
        let mut patch = patch.clone();
        patch["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        let mut doc = serde_json::to_value(d).unwrap();
        json_patch::merge(&mut doc, &patch);
        serde_json::from_value(doc).unwrap()
    }

    fn fargate_labels() -> BTreeMap<String, String> {
        BTreeMap::from([("spotkube.io/fargate".to_string(), "true".to_string())])
    }

    fn template(d: &Deployment) -> Value {
        serde_json::to_value(&d.spec.as_ref().unwrap().template).unwrap()
    }

    #[test]
    fn failover_then_recovery_returns_the_template_and_strategy_it_left() {
        let user = json!({ "type": "RollingUpdate",
                           "rollingUpdate": { "maxSurge": 0, "maxUnavailable": 1 } });
        let d0 = deployment(user.clone());
        let now = at("2026-12-01T10:00:00Z");
        let d1 = apply(&d0, &failover(&d0, &fargate_labels(), "evt-1", now));
        let labels = template_labels(&d1);
        assert_eq!(labels["spotkube.io/fargate"], "true");
        assert_eq!(labels["tier"], "front");
        // The rollout keeps every old pod: maxUnavailable 0, and it must surge.
        assert_eq!(
            serde_json::to_value(d1.spec.as_ref().unwrap().strategy.as_ref().unwrap()).unwrap(),
            json!({ "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": 0 } })
        );
        assert_eq!(state(&d1), Some(WorkloadState::Fargate));
        assert_eq!(d1.labels().get(FARGATE_WORKLOAD).unwrap(), "true");
        let r1 = FargateRecord::of(&d1).unwrap().unwrap();
        assert_eq!(r1.rollout.as_ref().unwrap().kind, RolloutKind::Failover);

        let d2 = apply(&d1, &complete(&d1, &r1, now).unwrap());
        assert_eq!(
            serde_json::to_value(d2.spec.as_ref().unwrap().strategy.as_ref().unwrap()).unwrap(),
            user
        );
        let r2 = FargateRecord::of(&d2).unwrap().unwrap();
        assert_eq!(r2.rollout, None);

        let later = at("2026-12-01T11:00:00Z");
        let d3 = apply(&d2, &recovery(&d2, &r2, "spot has room", later));
        assert_eq!(state(&d3), Some(WorkloadState::Recovering));
        assert_eq!(template(&d3), template(&d0));
        let r3 = FargateRecord::of(&d3).unwrap().unwrap();
        let d4 = apply(&d3, &complete(&d3, &r3, later).unwrap());
        assert_eq!(template(&d4), template(&d0));
        assert_eq!(
            serde_json::to_value(d4.spec.as_ref().unwrap().strategy.as_ref().unwrap()).unwrap(),
            user
        );
        assert_eq!(state(&d4), Some(WorkloadState::Spot));
        assert!(FargateRecord::of(&d4).is_none());
        assert!(!d4.labels().contains_key(FARGATE_WORKLOAD));
        assert_eq!(d4.annotations().get("team").unwrap(), "a");
    }

    #[test]
    fn a_label_the_user_had_under_the_profile_key_is_put_back() {
        let mut d0 = deployment(json!({ "type": "Recreate" }));
        d0.spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("spotkube.io/fargate".into(), "maybe".into());
        let now = at("2026-12-01T10:00:00Z");
        let d1 = apply(&d0, &failover(&d0, &fargate_labels(), "evt", now));
        let r1 = FargateRecord::of(&d1).unwrap().unwrap();
        assert_eq!(
            r1.before.get("spotkube.io/fargate").unwrap().as_deref(),
            Some("maybe")
        );
        let d2 = apply(&d1, &abort(&d1, &r1, now));
        // Still the event's reason: deciding again for that event fails nothing over.
        assert_eq!(d2.annotations()[REASON], "evt");
        let labels = template_labels(&d2);
        assert_eq!(labels.get("spotkube.io/fargate").unwrap(), "maybe");
        // Restarted, so new pods leave the reclaimed node for spot.
        let restarted = d2
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap();
        assert!(restarted.contains_key(RESTARTED_AT));
        assert_eq!(state(&d2), Some(WorkloadState::Spot));
        let r2 = FargateRecord::of(&d2).unwrap().unwrap();
        let d3 = apply(&d2, &complete(&d2, &r2, now).unwrap());
        // Recreate comes back whole, without the rollingUpdate spotkube added.
        assert_eq!(
            serde_json::to_value(d3.spec.as_ref().unwrap().strategy.as_ref().unwrap()).unwrap(),
            json!({ "type": "Recreate" })
        );
        assert!(FargateRecord::of(&d3).is_none());
        assert!(!d3.labels().contains_key(FARGATE_WORKLOAD));
    }

    #[test]
    fn a_failed_recovery_goes_back_counting_failures_and_success_resets_them() {
        let d0 = deployment(json!({ "type": "RollingUpdate",
                                    "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" } }));
        let now = at("2026-12-01T10:00:00Z");
        let d1 = apply(&d0, &failover(&d0, &fargate_labels(), "evt", now));
        let d1 = apply(
            &d1,
            &complete(&d1, &FargateRecord::of(&d1).unwrap().unwrap(), now).unwrap(),
        );
        let d2 = apply(
            &d1,
            &recovery(&d1, &FargateRecord::of(&d1).unwrap().unwrap(), "room", now),
        );
        let next = at("2026-12-01T10:30:00Z");
        let d3 = apply(
            &d2,
            &rollback(
                &d2,
                &FargateRecord::of(&d2).unwrap().unwrap(),
                "unhealthy",
                now,
                next,
            ),
        );
        assert_eq!(state(&d3), Some(WorkloadState::Fargate));
        assert_eq!(failed_recoveries(&d3), 1);
        assert_eq!(next_recovery(&d3), Some(next));
        let labels = template_labels(&d3);
        assert_eq!(labels.get("spotkube.io/fargate").unwrap(), "true");
        let d4 = apply(
            &d3,
            &complete(&d3, &FargateRecord::of(&d3).unwrap().unwrap(), now).unwrap(),
        );
        // Still on Fargate, still counting.
        assert_eq!(failed_recoveries(&d4), 1);
        let d5 = apply(
            &d4,
            &recovery(&d4, &FargateRecord::of(&d4).unwrap().unwrap(), "room", now),
        );
        let d6 = apply(
            &d5,
            &complete(&d5, &FargateRecord::of(&d5).unwrap().unwrap(), now).unwrap(),
        );
        assert_eq!(failed_recoveries(&d6), 0);
        assert_eq!(next_recovery(&d6), None);
        assert_eq!(state(&d6), Some(WorkloadState::Spot));
        assert_eq!(template(&d6), template(&d0));
    }

    #[test]
    fn backoff_doubles_from_base_and_stops_at_the_cap() {
        let base = Duration::from_secs(15 * 60);
        let cap = Duration::from_secs(4 * 3600);
        assert_eq!(backoff(1, base, cap), Duration::from_secs(30 * 60));
        assert_eq!(backoff(2, base, cap), Duration::from_secs(60 * 60));
        assert_eq!(backoff(3, base, cap), Duration::from_secs(120 * 60));
        assert_eq!(backoff(4, base, cap), cap);
        assert_eq!(backoff(40, base, cap), cap);
    }

    #[test]
    fn recovery_is_due_after_the_cooldown_and_the_backoff() {
        let mut d = deployment(json!({ "type": "Recreate" }));
        let a = d.metadata.annotations.get_or_insert_default();
        a.insert(MIGRATED_AT.into(), "2026-12-01T10:00:00Z".into());
        let cooldown = Duration::from_secs(45 * 60);
        assert_eq!(recovery_due(&d, cooldown), Some(at("2026-12-01T10:45:00Z")));
        d.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(FARGATE_COOLDOWN.into(), "5m".into());
        assert_eq!(recovery_due(&d, cooldown), Some(at("2026-12-01T10:05:00Z")));
        d.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(NEXT_RECOVERY.into(), "2026-12-01T12:00:00Z".into());
        assert_eq!(recovery_due(&d, cooldown), Some(at("2026-12-01T12:00:00Z")));
    }
}
