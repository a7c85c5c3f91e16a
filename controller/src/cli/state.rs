//! `spotkube-controller state get|set NAMESPACE/DEPLOYMENT`: an operator's view of a
//! workload's spotkube state, and a way to change it.

use clap::{Args, Subcommand};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use spotkube_shared::annotations::{self, WorkloadState};

use crate::error::{Error, KubeResultExt, Result};

#[derive(Args)]
pub struct StateArgs {
    #[command(subcommand)]
    action: StateAction,
}

#[derive(Subcommand)]
enum StateAction {
    /// Print the workload's spotkube annotations.
    Get { workload: String },
    /// Set `spotkube.io/state` (spot, surging, fargate, recovering).
    Set {
        workload: String,
        #[arg(value_parser = parse_state)]
        state: WorkloadState,
    },
}

fn parse_state(value: &str) -> Result<WorkloadState, String> {
    value
        .parse()
        .map_err(|e: annotations::InvalidValue| e.to_string())
}

fn split(workload: &str) -> Result<(&str, &str)> {
    workload
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .ok_or_else(|| Error::Invalid(format!("{workload:?}: expected NAMESPACE/DEPLOYMENT")))
}

/// The keys `state get` shows, in this order.
const SHOWN: &[&str] = &[
    annotations::STATE,
    annotations::REASON,
    annotations::MIGRATED_AT,
    annotations::SURGE_FROM,
    annotations::SURGE_UNTIL,
    annotations::FAILED_RECOVERIES,
    annotations::SURGE,
    annotations::SURGE_HOLD,
    annotations::FALLBACK,
];

pub async fn main(args: StateArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .kube("connect", "the API server (KUBECONFIG or in-cluster)")?;
    match args.action {
        StateAction::Get { workload } => {
            let (ns, name) = split(&workload)?;
            let d = Api::<Deployment>::namespaced(client, ns)
                .get(name)
                .await
                .kube("get", format_args!("deployment/{workload}"))?;
            let a = d.annotations();
            println!(
                "{workload}: replicas {}",
                d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
            );
            for key in SHOWN {
                println!(
                    "  {key}: {}",
                    a.get(*key).map(String::as_str).unwrap_or("-")
                );
            }
        }
        StateAction::Set { workload, state } => {
            let (ns, name) = split(&workload)?;
            let patch =
                json!({ "metadata": { "annotations": { annotations::STATE: state.as_str() } } });
            Api::<Deployment>::namespaced(client, ns)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .kube("patch", format_args!("deployment/{workload}"))?;
            println!("{workload}: {} = {state}", annotations::STATE);
        }
    }
    Ok(())
}
