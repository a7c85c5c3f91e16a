//! Eviction guards: when another tool (NTH, Karpenter, Cluster Autoscaler) drains a
//! Node through the Eviction API, spotkube does not fight its drain; it makes the
//! drain wait for the surge. A PodDisruptionBudget with `minAvailable: 1` over a
//! surged single-replica Deployment's pods refuses the tool's eviction of the old pod
//! (429, which every drain retries) until the replacement is Ready, and is deleted then
//! (or at its `spotkube.io/guard-until`, whatever happened to the leader meanwhile).
//!
//! A workload some PDB already selects gets none: two budgets over one pod make every
//! eviction of it fail.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::Actor;
use crate::error::{Error, KubeResultExt, Result};

/// The label on every guard spotkube creates (value `"true"`).
pub const GUARD_LABEL: &str = "spotkube.io/guard";
/// When a guard is removed at the latest (RFC 3339).
pub const GUARD_UNTIL: &str = "spotkube.io/guard-until";
/// A guard's life when its notice states no deadline.
const DEFAULT_LIFE: std::time::Duration = std::time::Duration::from_secs(600);

/// The guard of Deployment `name`.
pub fn guard_name(deployment: &str) -> String {
    let mut name = format!("spotkube-guard-{deployment}");
    name.truncate(253);
    name
}

/// Creates the guard of Deployment `namespace/name` unless a PDB already selects its
/// pods (or the guard exists).
pub async fn guard(
    actor: &Actor,
    namespace: &str,
    name: &str,
    until: Option<Timestamp>,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(actor.ctx.client.clone(), namespace);
    let Some(deployment) = deployments
        .get_opt(name)
        .await
        .kube("get", format_args!("deployment/{namespace}/{name}"))?
    else {
        return Ok(());
    };
    let spec = deployment.spec.clone().unwrap_or_default();
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(actor.ctx.client.clone(), namespace);
    let existing = pdbs
        .list(&ListParams::default())
        .await
        .kube("list", format_args!("poddisruptionbudgets in {namespace}"))?;
    let own = guard_name(name);
    if let Some(pdb) = existing.items.iter().find(|p| {
        p.name_any() != own
            && p.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|s| selects(s, &template_labels))
    }) {
        tracing::info!(pdb = %pdb.name_any(), "a PodDisruptionBudget already guards the workload");
        return Ok(());
    }
    let until = until.unwrap_or_else(|| {
        Timestamp::now()
            .checked_add(DEFAULT_LIFE)
            .unwrap_or(Timestamp::MAX)
    });
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: name.to_string(),
        uid: deployment.uid().unwrap_or_default(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    };
    let pdb = PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(own.clone()),
            labels: Some(BTreeMap::from([(GUARD_LABEL.into(), "true".into())])),
            annotations: Some(BTreeMap::from([(GUARD_UNTIL.into(), until.to_string())])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(spec.selector.clone()),
            ..Default::default()
        }),
        status: None,
    };
    match pdbs.create(&PostParams::default(), &pdb).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(Error::kube(
                "create",
                format_args!("poddisruptionbudget/{namespace}/{own}"),
                e,
            ));
        }
    }
    actor.guarded(namespace, name);
    tracing::info!(pdb = %own, %until, "eviction guard in place");
    actor
        .ctx
        .event(
            &deployment.object_ref(&()),
            EventType::Normal,
            "EvictionGuard",
            format!(
                "PodDisruptionBudget {own} (minAvailable 1) holds the drain of its node until the replacement is Ready (at most until {until}); the drain is the other tool's"
            ),
        )
        .await;
    Ok(())
}

/// Deletes the guard of Deployment `namespace/name` (gone already: fine).
pub async fn release(actor: &Actor, namespace: &str, name: &str) -> Result<()> {
    let own = guard_name(name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(actor.ctx.client.clone(), namespace);
    match pdbs.delete(&own, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(pdb = %own, "eviction guard removed");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(
            "delete",
            format_args!("poddisruptionbudget/{namespace}/{own}"),
            e,
        )),
    }
}

/// Deletes every guard past its `guard-until` (left by a leader that lost its term
/// before the replacement was Ready). Returns how many.
pub async fn sweep(actor: &Actor, now: Timestamp) -> Result<usize> {
    let pdbs: Api<PodDisruptionBudget> = Api::all(actor.ctx.client.clone());
    let list = pdbs
        .list(&ListParams::default().labels(&format!("{GUARD_LABEL}=true")))
        .await
        .kube("list", "poddisruptionbudgets")?;
    let mut removed = 0;
    for pdb in list.items {
        let expired = pdb
            .annotations()
            .get(GUARD_UNTIL)
            .and_then(|v| v.parse::<Timestamp>().ok())
            .is_none_or(|until| until <= now);
        if !expired {
            continue;
        }
        let namespace = pdb.namespace().unwrap_or_default();
        match Api::<PodDisruptionBudget>::namespaced(actor.ctx.client.clone(), &namespace)
            .delete(&pdb.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => removed += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => removed += 1,
            Err(e) => {
                return Err(Error::kube(
                    "delete",
                    format_args!("poddisruptionbudget/{namespace}/{}", pdb.name_any()),
                    e,
                ));
            }
        }
    }
    Ok(removed)
}

/// Whether `selector` selects a pod labelled `labels` (an empty selector selects all), by
/// kube's own matcher; a selector it cannot parse (an unknown operator) selects nothing.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let by = |match_labels: &[(&str, &str)], expressions: Vec<(&str, &str, &[&str])>| {
            LabelSelector {
                match_labels: Some(labels(match_labels)),
                match_expressions: Some(
                    expressions
                        .into_iter()
                        .map(|(key, operator, values)| LabelSelectorRequirement {
                            key: key.into(),
                            operator: operator.into(),
                            values: Some(values.iter().map(|v| v.to_string()).collect()),
                        })
                        .collect(),
                ),
            }
        };
        assert!(selects(&by(&[("app", "web")], vec![]), &pod));
        assert!(selects(&by(&[], vec![]), &pod), "empty selects all");
        assert!(!selects(&by(&[("app", "api")], vec![]), &pod));
        assert!(selects(
            &by(&[], vec![("tier", "In", &["front", "back"])]),
            &pod
        ));
        assert!(!selects(
            &by(&[], vec![("tier", "NotIn", &["front"])]),
            &pod
        ));
        assert!(selects(&by(&[], vec![("zone", "DoesNotExist", &[])]), &pod));
        assert!(!selects(
            &by(&[("app", "web")], vec![("zone", "Exists", &[])]),
            &pod
        ));
    }

    #[test]
    fn guard_names_fit_an_object_name() {
        assert_eq!(guard_name("web"), "spotkube-guard-web");
        assert_eq!(guard_name(&"x".repeat(253)).len(), 253);
    }
}
