//! The drain reconcile: on every Node spotkube marked, begin the drain of a planned
//! change once its lead time is reached, and keep protecting what still runs on a
//! Node about to go until the deadline. Messages are deleted once the Node is marked
//! and the surges are done; evictions run on afterwards, so a controller that dies
//! mid-drain leaves them to this loop on the next leader.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::act::Actor;
use crate::decide;
use crate::error::{Error, KubeResultExt, Result};
use crate::view;

/// One pass over the marked Nodes. A Node whose work fails never keeps the others
/// from theirs; the failures come back together.
pub async fn drain_once(actor: &Actor) -> Result<()> {
    let marked = actor.ctx.nodes.marked();
    let attempted = marked.len();
    let mut failures = Vec::new();
    for name in marked {
        let span = tracing::info_span!("drain", node = %name);
        if let Err(error) = drain_node(actor, &name).instrument(span).await {
            failures.push(error);
        }
    }
    Error::collect(failures, attempted)
}

async fn drain_node(actor: &Actor, name: &str) -> Result<()> {
    let ctx = &actor.ctx;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let Some(node) = api
        .get_opt(name)
        .await
        .kube("get", format_args!("node/{name}"))?
    else {
        return Ok(());
    };
    let now = Timestamp::now();
    let node_view = view::node_view(&node);
    let marks = decide::due_marks(&node_view, now);
    let node_view = node_view.after(&marks);
    if !marks.is_empty() {
        tracing::info!("planned change: its drain begins");
        actor.execute(name, marks, Instant::now()).await?;
    }
    if !node_view.notice.as_ref().is_some_and(|n| n.is_imminent()) {
        return Ok(());
    }
    let pods = ctx.pods_on(name).await?;
    let actions = decide::drain(&node_view, &pods, now);
    if !actions.is_empty() {
        tracing::debug!(?actions, "drain reconcile");
        actor.execute(name, actions, Instant::now()).await?;
    }
    Ok(())
}

pub async fn run(actor: Actor, every: Duration, stop: CancellationToken) {
    while super::tick(every, &stop).await {
        if let Err(error) = drain_once(&actor).await {
            tracing::warn!(%error, "drain pass failed");
        }
    }
}
