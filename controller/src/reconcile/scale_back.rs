//! The scale-back reconcile: every Deployment carrying `spotkube.io/surge-from` whose
//! hold is over is scaled back (or, when someone changed its replicas meanwhile, only
//! forgotten).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use spotkube_shared::annotations::{SURGE_FROM, SURGE_UNTIL};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::act::{Actor, end_surge};
use crate::decide;
use crate::error::{KubeResultExt, Result};

/// One pass over every Deployment carrying `surge-from`.
pub async fn scale_back_once(actor: &Actor) -> Result<()> {
    let api: Api<Deployment> = Api::all(actor.ctx.client.clone());
    let now = Timestamp::now();
    let deployments = api
        .list(&ListParams::default())
        .await
        .kube("list", "deployments")?;
    for d in deployments {
        let a = d.annotations();
        let (Some(from), Some(until)) = (
            a.get(SURGE_FROM).and_then(|v| v.parse::<i32>().ok()),
            a.get(SURGE_UNTIL).and_then(|v| v.parse::<Timestamp>().ok()),
        ) else {
            continue;
        };
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let decision = decide::scale_back(from, until, replicas, now);
        let span = tracing::info_span!(
            "action",
            action = "scale-back",
            object = %format!("deployment/{}/{}", d.namespace().unwrap_or_default(), d.name_any())
        );
        let result = end_surge(actor, &d, decision).instrument(span).await;
        if !matches!(result, Ok(None)) {
            actor.ctx.metrics.action_result("scale-back", &result);
        }
        result?;
    }
    Ok(())
}

/// The scale-back reconcile, every `every`, until cancelled.
pub async fn run(actor: Actor, every: Duration, stop: CancellationToken) {
    loop {
        if let Err(error) = scale_back_once(&actor).await {
            tracing::warn!(%error, "scale-back pass failed");
        }
        if !super::tick(every, &stop).await {
            return;
        }
    }
}
