//! `spotkube-controller savings`: what opted-in workloads cost now, where they run and
//! what they would cost on on-demand, as a table or JSON. The same computation as the
//! leader's savings loop, from one LIST of Nodes, pods and Namespaces (the loop reads
//! watch caches instead) and prices gathered once from `--source`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use spotkube_shared::ranking::{CONFIGMAP_KEY, Ranking, compute as rank};

use super::rank::{Output, RankArgs};
use crate::error::{Error, KubeResultExt, Result};
use crate::pricing::snapshot::{self, SnapshotLocation};
use crate::pricing::{PriceSource, SpotPrices};
use crate::reconcile::savings::POD_FIELD_SELECTOR;
use crate::savings::compute::{
    FargateRates, NodeFacts, PodFacts, Report, compute, missing_spot_prices,
};
use crate::savings::inputs::{enabled, node_facts, opted_in, pod_enabled, pod_facts};
use crate::savings::prices::{FARGATE_GB_HOUR_US_EAST_1, FARGATE_VCPU_HOUR_US_EAST_1, table};
use crate::savings::render;

/// Fargate's rates (shared by `run` and `savings`).
#[derive(Debug, Clone, clap::Args)]
pub struct FargateArgs {
    /// Fargate $ per vCPU-hour (default: Linux/x86 in us-east-1).
    #[arg(long, env = "SPOTKUBE_FARGATE_VCPU_HOUR", default_value_t = FARGATE_VCPU_HOUR_US_EAST_1)]
    pub fargate_vcpu_hour: f64,
    /// Fargate $ per GB-hour of memory (default: Linux/x86 in us-east-1).
    #[arg(long, env = "SPOTKUBE_FARGATE_GB_HOUR", default_value_t = FARGATE_GB_HOUR_US_EAST_1)]
    pub fargate_gb_hour: f64,
}

impl FargateArgs {
    pub fn rates(&self) -> FargateRates {
        FargateRates {
            vcpu_hour: self.fargate_vcpu_hour,
            gb_hour: self.fargate_gb_hour,
        }
    }
}

/// Flags of `savings`.
#[derive(Debug, Clone, clap::Args)]
pub struct SavingsArgs {
    /// Only this namespace's workloads (default: every opted-in namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Where prices come from (`--source`, `--region`, ...) and `--output`, as `rank`.
    #[command(flatten)]
    pub prices: RankArgs,
    #[command(flatten)]
    pub fargate: FargateArgs,
    /// `namespace/name` of the published ranking ConfigMap, whose ranks are shown.
    #[arg(long, env = "SPOTKUBE_RANKING_CONFIGMAP", default_value = spotkube_shared::config::DEFAULT_RANKING_CONFIGMAP, value_parser = spotkube_shared::config::object_ref)]
    pub ranking_configmap: (String, String),
}

/// The snapshot's on-demand prices of `region`: the fallback for types the source has
/// no on-demand price for.
pub fn fallback_on_demand(
    location: &SnapshotLocation,
    region: Option<&str>,
) -> Result<BTreeMap<String, f64>> {
    snapshot::on_demand_prices(location, region.unwrap_or("us-east-1"))
}

/// Runs `savings`: prints the report to stdout.
pub async fn run(args: SavingsArgs) -> Result<()> {
    let client = Client::try_default()
        .await
        .kube("connect", "the API server (KUBECONFIG or in-cluster)")?;
    let (nodes, pods) = list(&client, args.namespace.as_deref()).await?;
    let report = report(&client, &args, &nodes, &pods).await?;
    let text = match args.prices.output {
        Output::Json => render::json(&report),
        Output::Table => render::table(&report),
    };
    // A closed pipe (`savings | head`) is the reader's choice, not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
            what: "standard output".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Nodes and the opted-in pods (of `namespace` only, when given), one LIST each.
async fn list(client: &Client, namespace: Option<&str>) -> Result<(Vec<NodeFacts>, Vec<PodFacts>)> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .kube("list", "nodes")?;
    let namespaces: BTreeMap<String, bool> = match namespace {
        Some(ns) => Api::<Namespace>::all(client.clone())
            .get_opt(ns)
            .await
            .kube("get", format_args!("namespace/{ns}"))?
            .map(|n| {
                (
                    ns.to_string(),
                    enabled(n.metadata.annotations.as_ref()) == Some(true),
                )
            })
            .into_iter()
            .collect(),
        None => Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
            .kube("list", "namespaces")?
            .items
            .into_iter()
            .filter_map(|n| {
                let on = enabled(n.metadata.annotations.as_ref()) == Some(true);
                Some((n.metadata.name?, on))
            })
            .collect(),
    };
    let pods_api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pods = pods_api
        .list(&ListParams::default().fields(POD_FIELD_SELECTOR))
        .await
        .kube("list", "pods")?
        .items
        .iter()
        .filter_map(|p| {
            let facts = pod_facts(p)?;
            let namespace = namespaces.get(&facts.workload.namespace).copied();
            opted_in(namespace.unwrap_or(false), pod_enabled(p)).then_some(facts)
        })
        .collect();
    Ok((nodes.items.iter().map(node_facts).collect(), pods))
}

/// The ranking the extender scores with (the published ConfigMap); `None` when none is
/// published or it cannot be read.
async fn published_ranking(
    client: &Client,
    (namespace, name): &(String, String),
) -> Option<Ranking> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .inspect_err(|error| tracing::warn!(%error, "the published ranking could not be read"))
        .ok()??;
    Ranking::from_json(cm.data?.get(CONFIGMAP_KEY)?)
        .inspect_err(|error| tracing::warn!(%error, "the published ranking is not readable"))
        .ok()
}

/// Gathers the prices once and computes the report.
async fn report(
    client: &Client,
    args: &SavingsArgs,
    nodes: &[NodeFacts],
    pods: &[PodFacts],
) -> Result<Report> {
    let source = args.prices.source(&mut Registry::default()).await?;
    let criteria = args.prices.criteria();
    let book = source.price_book(&criteria).await?;
    // Ranks as the extender sees them; without a published ranking, as `rank` would
    // publish it from these prices.
    let ranking = match published_ranking(client, &args.ranking_configmap).await {
        Some(ranking) => ranking,
        None => rank(&book, &criteria, source.name(), jiff::Timestamp::now()),
    };
    let location = SnapshotLocation::from_flag(args.prices.snapshot.clone());
    let fallback = fallback_on_demand(&location, book.region.as_deref())?;
    let fargate = args.fargate.rates();
    let mut prices = table(
        Some(&book),
        Some(&ranking),
        &SpotPrices::new(),
        &fallback,
        fargate,
    );
    let missing: Vec<String> = missing_spot_prices(nodes, &prices).into_iter().collect();
    if !missing.is_empty() {
        let extra = source.spot_prices(&missing).await?;
        prices = table(Some(&book), Some(&ranking), &extra, &fallback, fargate);
    }
    Ok(compute(nodes, pods, &prices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    #[test]
    fn flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from([
            "spotkube-controller",
            "savings",
            "--namespace=shop",
            "--output=json",
            "--source=snapshot",
        ])
        .unwrap();
        let Some(Command::Savings(args)) = cli.command else {
            panic!("not savings");
        };
        assert_eq!(args.namespace.as_deref(), Some("shop"));
        assert_eq!(args.prices.output, Output::Json);
        assert_eq!(args.fargate.rates().vcpu_hour, 0.04048);
        assert_eq!(args.fargate.rates().gb_hour, 0.004445);
    }

    #[test]
    fn the_fallback_is_the_snapshots_on_demand_list() {
        let prices = fallback_on_demand(&SnapshotLocation::Embedded, None).unwrap();
        assert_eq!(prices["c7g.4xlarge"], 0.58);
        assert_eq!(prices["m7g.large"], 0.0816);
        assert!(
            fallback_on_demand(&SnapshotLocation::Embedded, Some("mars-1"))
                .unwrap()
                .is_empty()
        );
    }
}
