//! The recovery loop (leader only): every Deployment labelled `spotkube.io/on-fargate`
//! (from a watch, so an idle pass reads nothing) is moved one step along its Fargate
//! transition: a rollout in flight is judged by its health and completed, abandoned or
//! rolled back; a workload settled on Fargate whose cooldown and backoff are over goes
//! back to spot when spot has room. Every transition is an Event (and a notification),
//! a metric, and a log line.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use spotkube_shared::admin::Readiness;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::Result;
use crate::fargate::health::health;
use crate::fargate::room::SpotRoom;
use crate::fargate::step::{self, Endpoints, Next, Verdict};
use crate::fargate::transitions::{self, Done};
use crate::fargate::{FargateRecord, Settings};
use crate::labelled::LabelledDeployments;

/// What one pass did (for the bench and the log).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub followed: usize,
    pub due: usize,
    pub transitions: usize,
    /// API requests made (reads and writes; Events not counted).
    pub requests: u64,
}

/// One pass over `deployments` (the labelled ones, as last seen) at `now`.
pub async fn pass(
    ctx: &Context,
    settings: &Settings,
    deployments: &[Deployment],
    now: Timestamp,
) -> PassReport {
    let mut report = PassReport::default();
    let mut room: Option<SpotRoom> = None;
    for d in deployments {
        let object = format!(
            "deployment/{}/{}",
            d.namespace().unwrap_or_default(),
            d.name_any()
        );
        let result = one(ctx, settings, d, now, &mut room, &mut report).await;
        match result {
            Ok(Some(done)) => {
                report.transitions += 1;
                transitions::announce(ctx, &done).await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, object, "fargate step failed; tried again next pass");
                ctx.metrics.action("fargate", "error", error.category());
            }
        }
    }
    ctx.metrics
        .fargate
        .pass_requests
        .set(report.requests as i64);
    ctx.metrics.fargate.workloads.set(
        deployments
            .iter()
            .filter(|d| FargateRecord::of(d).is_some())
            .count() as i64,
    );
    report
}

async fn one(
    ctx: &Context,
    settings: &Settings,
    d: &Deployment,
    now: Timestamp,
    room: &mut Option<SpotRoom>,
    report: &mut PassReport,
) -> Result<Option<Done>> {
    let record = match FargateRecord::of(d) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(error)) => {
            tracing::warn!(%error, "unreadable Fargate record; left alone");
            return Ok(None);
        }
    };
    match step::next(d, record.as_ref(), now, settings.cooldown) {
        Next::Nothing | Next::NotBefore(_) => Ok(None),
        Next::Follow { kind, started } => {
            report.followed += 1;
            let record = record.expect("a rollout has a record");
            let (health, reads) = health(&ctx.client, d, kind.to_fargate()).await?;
            report.requests += reads;
            let verdict = step::judge(kind, started, &health, now, settings.timeouts);
            tracing::debug!(?health, ?verdict, kind = kind.as_str(), "rollout judged");
            let without_service = health.endpoints == Endpoints::NoService;
            let done = transitions::conclude(
                &ctx.client,
                settings,
                d,
                &record,
                &verdict,
                without_service,
                now,
            )
            .await?;
            if verdict != Verdict::Wait {
                report.requests += 1; // the write, applied or refused as a conflict
            }
            Ok(done)
        }
        Next::RecoveryDue => {
            report.due += 1;
            let Some(spec) = d.spec.as_ref().and_then(|s| s.template.spec.clone()) else {
                return Ok(None);
            };
            if room.is_none() {
                *room = Some(SpotRoom::survey(&ctx.client, &ctx.ice).await?);
                report.requests += 1;
            }
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(1) as usize;
            let survey = room.as_mut().expect("surveyed above");
            let (nodes, reads) = survey.take(&ctx.client, &spec, replicas).await?;
            report.requests += reads;
            let Some(nodes) = nodes else {
                tracing::debug!("recovery due, but spot has no room for it");
                return Ok(None);
            };
            let why = format!("spot has room (node {})", nodes.join(", "));
            let done = transitions::recover(&ctx.client, d, &why, now).await?;
            report.requests += 1;
            Ok(done)
        }
    }
}

/// The recovery loop, every `settings.interval`, until cancelled; the watch of the
/// labelled Deployments runs alongside for as long as the term lasts.
pub async fn run(ctx: Context, settings: Arc<Settings>, stop: CancellationToken) {
    let labelled = LabelledDeployments::on_fargate();
    let synced = Readiness::default().gate("deployments on fargate");
    let watch = labelled.clone().run(ctx.client.clone(), synced.clone());
    let passes = async {
        loop {
            // Until the first list is in, the index would claim nothing is on Fargate.
            if synced.is_open() {
                let report = pass(&ctx, &settings, &labelled.deployments(), Timestamp::now()).await;
                if report.transitions > 0 {
                    tracing::debug!(?report, "fargate pass");
                }
            }
            if !super::tick(settings.interval, &stop).await {
                return;
            }
        }
    };
    tokio::select! {
        _ = watch => {}
        _ = passes => {}
    }
}
