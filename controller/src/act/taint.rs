//! Node actions: taint + cordon + notice in one optimistic-concurrency patch, and the
//! clean-up when the instance is gone.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde_json::json;
use spotkube_shared::annotations::{INTERRUPTION, INTERRUPTION_TAINT, InterruptionNotice};

use super::Actor;
use crate::decide::TaintEffect;
use crate::decide::external::drained_by_source;
use crate::error::{Error, KubeResultExt, Result};

const ATTEMPTS: usize = 5;

/// Replaces spotkube's taint (if any) with `effect`, cordons when asked, and records
/// the notice. The taint list is rewritten under the Node's resourceVersion so no
/// concurrent taint change is lost.
pub async fn mark(
    actor: &Actor,
    node_name: &str,
    seen: Option<&Node>,
    effect: TaintEffect,
    cordon: bool,
    notice: &InterruptionNotice,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(actor.ctx.client.clone());
    let node = patch_taints(
        &nodes,
        node_name,
        seen,
        |taints| {
            taints.retain(|t| t.key != INTERRUPTION_TAINT);
            taints.push(Taint {
                key: INTERRUPTION_TAINT.into(),
                effect: effect.as_str().into(),
                value: None,
                time_added: None,
            });
        },
        |spec| {
            if cordon {
                spec["unschedulable"] = json!(true);
            }
        },
        json!({ INTERRUPTION: notice.to_annotation() }),
    )
    .await?;
    let deadline = notice
        .deadline
        .map(|d| format!(", deadline {d}"))
        .unwrap_or_default();
    // Which tool said so, and whose drain it is.
    let source = match notice.source.as_deref() {
        Some(source) if drained_by_source(notice) => format!(
            "; signalled by {source}, which drains the node itself: spotkube surges single-replica workloads, guards their eviction until the replacement is Ready, and evicts nothing"
        ),
        Some(source) => format!("; signalled by {source}"),
        None => String::new(),
    };
    actor
        .ctx
        .event(
            &node.object_ref(&()),
            EventType::Warning,
            "SpotInterruption",
            format!(
                "{}: tainted {INTERRUPTION_TAINT}:{}{}{deadline}{source}",
                notice.kind,
                effect.as_str(),
                if cordon { " and cordoned" } else { "" }
            ),
        )
        .await;
    tracing::info!(kind = %notice.kind, effect = effect.as_str(), cordon, source = ?notice.source, "node marked");
    Ok(())
}

/// Removes spotkube's taint and notice, and its cordon when the instance came back
/// (`uncordon`). The Node itself is never deleted: that is the cloud provider's and
/// the node lifecycle controller's job.
pub async fn clean(
    actor: &Actor,
    node_name: &str,
    seen: Option<&Node>,
    uncordon: bool,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(actor.ctx.client.clone());
    let node = patch_taints(
        &nodes,
        node_name,
        seen,
        |taints| taints.retain(|t| t.key != INTERRUPTION_TAINT),
        |spec| {
            if uncordon {
                spec["unschedulable"] = json!(false);
            }
        },
        json!({ INTERRUPTION: null }),
    )
    .await?;
    let note = if uncordon {
        "instance is running again after its interruption window: spotkube's taint, notice and cordon removed"
    } else {
        "instance is going, gone, or its scheduled change is over: spotkube's taint and notice removed"
    };
    actor
        .ctx
        .event(
            &node.object_ref(&()),
            EventType::Normal,
            "InterruptionCleared",
            note.into(),
        )
        .await;
    Ok(())
}

/// Patches the Node's taints under the resourceVersion they were read at. The first
/// attempt starts from `seen` when the caller has just read the Node (one GET fewer on
/// the path from an interruption warning to its taint); a conflict reads it again.
async fn patch_taints(
    nodes: &Api<Node>,
    name: &str,
    seen: Option<&Node>,
    edit: impl Fn(&mut Vec<Taint>),
    spec_extra: impl Fn(&mut serde_json::Value),
    annotations: serde_json::Value,
) -> Result<Node> {
    let mut last = None;
    // Borrowed, not cloned: only the taints and the resourceVersion are read from it.
    let mut seen = seen.map(Cow::Borrowed);
    for _ in 0..ATTEMPTS {
        let node = match seen.take() {
            Some(node) => node,
            None => Cow::Owned(
                nodes
                    .get(name)
                    .await
                    .kube("get", format_args!("node/{name}"))?,
            ),
        };
        let mut taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        edit(&mut taints);
        let mut spec = json!({ "taints": taints });
        spec_extra(&mut spec);
        let patch = json!({
            "metadata": {
                "resourceVersion": node.metadata.resource_version,
                "annotations": annotations,
            },
            "spec": spec,
        });
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(node) => return Ok(node),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                last = Some(status.message.clone());
            }
            Err(e) => return Err(Error::kube("patch", format_args!("node/{name}"), e)),
        }
    }
    Err(Error::Conflict {
        object: format!("node/{name}"),
        message: format!(
            "still conflicting after {ATTEMPTS} attempts: {}",
            last.unwrap_or_default()
        ),
    })
}
