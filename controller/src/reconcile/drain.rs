//! The drain reconcile: on every Node spotkube marked as about to go, keep protecting
//! what still runs there until the deadline. Messages are deleted once the Node is
//! marked and the surges are done; evictions run on afterwards, so a controller that
//! dies mid-drain leaves them to this loop on the next leader.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::act::Actor;
use crate::decide;
use crate::error::{KubeResultExt, Result};
use crate::view;

pub async fn drain_once(actor: &Actor) -> Result<()> {
    let ctx = &actor.ctx;
    let api: Api<Node> = Api::all(ctx.client.clone());
    for name in ctx.nodes.marked() {
        let Some(node) = api
            .get_opt(&name)
            .await
            .kube("get", format_args!("node/{name}"))?
        else {
            continue;
        };
        let node_view = view::node_view(&node);
        if !node_view.notice.as_ref().is_some_and(|n| n.is_imminent()) {
            continue;
        }
        let span = tracing::info_span!("drain", node = %name);
        async {
            let pods = view::pods_on(&ctx.client, &name, &ctx.defaults).await?;
            let actions = decide::drain(&node_view, &pods, Timestamp::now());
            if !actions.is_empty() {
                tracing::debug!(?actions, "drain reconcile");
                actor
                    .execute(&name, actions, std::time::Instant::now())
                    .await?;
            }
            Ok::<_, crate::Error>(())
        }
        .instrument(span)
        .await?;
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
