//! The scale-back reconcile: every Deployment labelled `spotkube.io/surging` whose
//! hold (`spotkube.io/surge-until`) is over and whose Node (`spotkube.io/surge-node`) no
//! longer carries spotkube's notice, or whose Node is gone, is scaled back (or, when someone changed its replicas meanwhile, only
//! forgotten). Ending a surge once its Node is gone keeps a node autoscaler
//! (Karpenter, Cluster Autoscaler) from keeping capacity, or launching more, for a
//! replica nobody asked for.
//!
//! The labelled Deployments come from a watch ([`LabelledDeployments::surging`]), so a pass reads
//! nothing from the API: an idle controller costs the same with 50 Deployments or
//! 50,000. Deployments surged by a version that did not label them (annotation set,
//! label missing) are found once per leadership term by a paginated list and labelled
//! ([`label_unlabelled_surges`]); from then on the watch sees them.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Api, ResourceExt};
use serde_json::json;
use spotkube_shared::admin::Readiness;
use spotkube_shared::annotations::{SURGE_FROM, SURGE_NODE, SURGE_UNTIL};
use spotkube_shared::labels::{SURGING, SURGING_VALUE};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::act::{Actor, end_surge};
use crate::decide::{self, ScaleBack, SurgeNode};
use crate::error::{KubeResultExt, Result};
use crate::labelled::LabelledDeployments;

/// Deployments per page of the one-time list.
const PAGE: u32 = 500;

/// One pass over `surging` (the labelled Deployments, as last seen) at `now`.
pub async fn scale_back_once(actor: &Actor, surging: &[Deployment], now: Timestamp) -> Result<()> {
    for d in surging {
        let a = d.annotations();
        let record = a
            .get(SURGE_FROM)
            .and_then(|v| v.parse::<i32>().ok())
            .zip(a.get(SURGE_UNTIL).and_then(|v| v.parse::<Timestamp>().ok()));
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        // Where the Node the surge was for stands. (The index is synced before the
        // leader acts.)
        let node = match a.get(SURGE_NODE) {
            Some(node) if record.is_some() => {
                let gone = !actor.ctx.nodes.exists(node);
                if !gone && !actor.ctx.nodes.is_marked(node) {
                    SurgeNode::Cleared
                } else if pods_on(actor, d, node).await? > 0 {
                    SurgeNode::Holding
                } else if gone {
                    SurgeNode::Gone
                } else {
                    SurgeNode::Marked
                }
            }
            _ => SurgeNode::Cleared,
        };
        let decision = match record {
            Some((from, until)) => decide::scale_back(from, until, replicas, now, node),
            None => ScaleBack::DropLabel,
        };
        let span = tracing::info_span!(
            "action",
            action = "scale-back",
            object = %format!("deployment/{}/{}", d.namespace().unwrap_or_default(), d.name_any())
        );
        let result = end_surge(actor, d, decision).instrument(span).await;
        if !matches!(result, Ok(None)) {
            actor.ctx.metrics.action_result("scale-back", &result);
        }
        result?;
    }
    Ok(())
}

/// Pods of Deployment `d` still bound to Node `node`: one LIST of the namespace's pods
/// on that Node, only for a surge whose Node is marked or gone.
async fn pods_on(actor: &Actor, d: &Deployment, node: &str) -> Result<usize> {
    let namespace = d.namespace().unwrap_or_default();
    let Some(selector) = d
        .spec
        .as_ref()
        .and_then(|s| Selector::try_from(s.selector.clone()).ok())
    else {
        return Ok(0);
    };
    let pods = Api::<Pod>::namespaced(actor.ctx.client.clone(), &namespace)
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .kube("list", format_args!("pods/{namespace} on node/{node}"))?;
    Ok(pods
        .items
        .iter()
        .filter(|p| selector.matches(p.labels()))
        .count())
}

/// Labels every Deployment that carries `surge-from` but not the surging label (surged
/// by an older version), reading all Deployments once, page by page. Returns how many
/// were labelled.
pub async fn label_unlabelled_surges(actor: &Actor) -> Result<usize> {
    let api: Api<Deployment> = Api::all(actor.ctx.client.clone());
    // Only the missing label is selectable; the annotation is checked on each item.
    let mut params = ListParams::default()
        .labels(&format!("!{SURGING}"))
        .limit(PAGE);
    let mut labelled = 0;
    loop {
        let page = api.list(&params).await.kube("list", "deployments")?;
        for d in page
            .items
            .iter()
            .filter(|d| d.annotations().contains_key(SURGE_FROM))
        {
            let namespace = d.namespace().unwrap_or_default();
            let name = d.name_any();
            // If the surge ends between the list and this write, the label is left
            // without a surge on record; the next pass drops it (ScaleBack::DropLabel).
            let patch = json!({ "metadata": { "labels": { SURGING: SURGING_VALUE } } });
            Api::<Deployment>::namespaced(actor.ctx.client.clone(), &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .kube("patch", format_args!("deployment/{namespace}/{name}"))?;
            tracing::info!(deployment = %format!("{namespace}/{name}"), "labelled a surge of an older version");
            labelled += 1;
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(labelled),
        }
    }
}

/// The scale-back reconcile, every `every`, until cancelled. The surging watch runs
/// alongside for as long as the term lasts.
pub async fn run(actor: Actor, every: Duration, stop: CancellationToken) {
    let surging = LabelledDeployments::surging();
    let synced = Readiness::default().gate("surging deployments");
    let watch = surging
        .clone()
        .run(actor.ctx.client.clone(), synced.clone());
    let passes = async {
        let mut adopted = false;
        loop {
            if !adopted {
                match label_unlabelled_surges(&actor).await {
                    Ok(_) => adopted = true,
                    Err(error) => tracing::warn!(%error, "looking for unlabelled surges failed"),
                }
            }
            // Until the first list is in, the index would claim no surge is running.
            if synced.is_open() {
                let deployments = surging.deployments();
                if let Err(error) = scale_back_once(&actor, &deployments, Timestamp::now()).await {
                    tracing::warn!(%error, "scale-back pass failed");
                }
            }
            if !super::tick(every, &stop).await {
                return;
            }
        }
    };
    // The watch never ends on its own; the passes end with the term.
    tokio::select! {
        _ = watch => {}
        _ = passes => {}
    }
}
