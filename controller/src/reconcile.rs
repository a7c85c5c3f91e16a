//! The drain reconcile: on every Node spotkube marked as about to go, keep protecting
//! what still runs there until the deadline. Messages are deleted once the Node is
//! marked and the surges are done; evictions run on afterwards, so a controller that
//! dies mid-drain leaves them to this loop on the next leader.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use spotkube_shared::policy::Policy;
use tokio_util::sync::CancellationToken;

use crate::act::Actor;
use crate::decide;
use crate::nodes_index::NodesIndex;
use crate::view;

pub async fn drain_once(
    actor: &Actor,
    nodes: &NodesIndex,
    defaults: &Policy,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(actor.client.clone());
    for name in nodes.marked() {
        let Some(node) = api.get_opt(&name).await? else {
            continue;
        };
        let node_view = view::node_view(&node);
        if !node_view.notice.as_ref().is_some_and(|n| n.is_imminent()) {
            continue;
        }
        let pods = view::pods_on(&actor.client, &name, defaults).await?;
        let actions = decide::drain(&node_view, &pods, Timestamp::now());
        if !actions.is_empty() {
            tracing::debug!(node = name, ?actions, "drain reconcile");
            actor
                .execute(&name, actions, std::time::Instant::now())
                .await?;
        }
    }
    Ok(())
}

pub async fn run_drain(
    actor: Actor,
    nodes: NodesIndex,
    defaults: Policy,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(error) = drain_once(&actor, &nodes, &defaults).await {
            tracing::warn!(error = format!("{error:#}"), "drain pass failed");
        }
    }
}
