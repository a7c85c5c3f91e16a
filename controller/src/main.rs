//! spotkube-controller: turns EC2 interruption events into taints, surges and
//! evictions before the instance goes.

mod act;
mod aws;
mod decide;
mod intake;
mod leader;
mod metrics;
mod nodes_index;
mod pricing;
mod reconcile;
mod state;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use prometheus_client::registry::Registry;
use spotkube_shared::admin::{self, Readiness};
use spotkube_shared::policy::Policy;
use spotkube_shared::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "spotkube-controller",
    version,
    about,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[arg(long, env = "SPOTKUBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Plain-HTTP /healthz /readyz /metrics (`run`).
    #[arg(
        long,
        env = "SPOTKUBE_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    admin_listen: SocketAddr,
    #[command(subcommand)]
    command: Option<Command>,
    /// `run`'s flags, so that `spotkube-controller --queue-url URL` runs.
    #[command(flatten)]
    run: Option<RunArgs>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume interruption events and act on them (the default).
    Run(RunArgs),
    /// Show or change a workload's spotkube state, for operators.
    State(state::StateArgs),
    /// Print the spot price ranking per AZ (table or the ranking JSON).
    Rank(pricing::cli::RankArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The SQS queue EventBridge delivers interruption events to.
    #[arg(long, env = "SPOTKUBE_QUEUE_URL")]
    queue_url: String,
    /// Publish the price ranking ConfigMap (leader only), from `--source`.
    #[arg(long, env = "SPOTKUBE_PUBLISH_RANKING")]
    publish_ranking: bool,
    /// How often to refresh the ranking (default 10m).
    #[arg(long, env = "SPOTKUBE_RANKING_INTERVAL", value_parser = humantime::parse_duration)]
    ranking_interval: Option<Duration>,
    /// The ranking's price source and `--region` (shared with `rank`).
    #[command(flatten)]
    ranking: pricing::cli::RankArgs,
    /// How long a received message stays invisible while being acted on.
    #[arg(long, env = "SPOTKUBE_VISIBILITY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    visibility_timeout: Duration,
    /// Disable the AWS SDK's retries (tests against moto).
    #[arg(long, env = "SPOTKUBE_AWS_DISABLE_RETRIES")]
    aws_disable_retries: bool,
    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        env = "SPOTKUBE_LEASE_NAMESPACE",
        default_value = "spotkube-system"
    )]
    lease_namespace: String,
    #[arg(
        long,
        env = "SPOTKUBE_LEASE_NAME",
        default_value = "spotkube-controller"
    )]
    lease_name: String,
    /// Seconds a lease stays valid after its last renewal (failover time).
    #[arg(long, env = "SPOTKUBE_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// This replica's identity (default: the pod name from POD_NAME, else HOSTNAME + pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How often to look for scaled surges whose hold is over.
    #[arg(long, env = "SPOTKUBE_SCALE_BACK_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    scale_back_interval: Duration,
}

fn main() -> anyhow::Result<()> {
    telemetry::install_crypto_provider();
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    match (cli.command, cli.run) {
        (Some(Command::Run(args)), _) | (None, Some(args)) => {
            runtime.block_on(run(args, cli.admin_listen))
        }
        (Some(Command::State(args)), _) => runtime.block_on(state::main(args)),
        (Some(Command::Rank(args)), _) => runtime.block_on(pricing::cli::run(args)),
        (None, None) => anyhow::bail!("missing --queue-url (see --help)"),
    }
}

async fn run(args: RunArgs, admin_listen: SocketAddr) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("building the kube client (KUBECONFIG or in-cluster)")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "spotkube-controller".into());
        format!("{host}-{}", std::process::id())
    });

    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let ranking_metrics = pricing::refresher::RefreshMetrics::register(&mut registry);
    let ranking_source = if args.publish_ranking {
        Some(Arc::new(args.ranking.source().await?))
    } else {
        None
    };
    let ranking_criteria = args.ranking.criteria();
    let ranking_interval = args
        .ranking_interval
        .unwrap_or(pricing::refresher::DEFAULT_INTERVAL);
    let readiness = Readiness::default();
    let nodes_synced = readiness.gate("nodes index");
    let leading = readiness.gate("leader");
    // A standby is healthy and ready to take over; /readyz only reports the cache.
    leading.open();

    let stop = CancellationToken::new();
    let admin_stop = stop.clone();
    let admin_task = tokio::spawn(admin::serve(
        admin_listen,
        admin::router(Arc::new(registry), readiness.clone()),
        async move { admin_stop.cancelled().await },
    ));

    let nodes = nodes_index::NodesIndex::default();
    let index_task = tokio::spawn(nodes.clone().run(client.clone(), nodes_synced.clone()));

    let sqs = aws_sdk_sqs::Client::new(
        &aws::sdk_config(args.ranking.region.clone(), args.aws_disable_retries).await,
    );
    let actor = act::Actor::new(client.clone(), Some(identity.clone()), metrics);
    let intake = intake::Intake {
        sqs,
        queue_url: args.queue_url.clone(),
        visibility_timeout: args.visibility_timeout,
        nodes: nodes.clone(),
        actor: actor.clone(),
        defaults: Policy::default(),
    };
    let scale_back_every = args.scale_back_interval;
    let ranking_client = client.clone();
    let work = move |token: CancellationToken| {
        // The ranking ConfigMap has one writer: the leader.
        let ranking = ranking_source.clone().map(|source| {
            pricing::refresher::spawn(
                ranking_client.clone(),
                source,
                ranking_criteria.clone(),
                ranking_interval,
                pricing::refresher::Target::default(),
                ranking_metrics.clone(),
                token.clone(),
            )
        });
        let intake = intake.clone();
        let actor = actor.clone();
        let nodes = nodes.clone();
        let synced = nodes_synced.clone();
        async move {
            // Never map instances to nodes on a partial index.
            while !synced.is_open() {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            let drain = tokio::spawn(reconcile::run_drain(
                actor.clone(),
                nodes,
                Policy::default(),
                scale_back_every,
                token.clone(),
            ));
            let scale_back =
                tokio::spawn(act::run_scale_back(actor, scale_back_every, token.clone()));
            intake.run(token).await;
            let _ = scale_back.await;
            let _ = drain.await;
            if let Some(ranking) = ranking {
                let _ = ranking.await;
            }
        }
    };
    let result = leader::run_while_leader(
        client,
        leader::LeaderConfig {
            namespace: args.lease_namespace,
            lease_name: args.lease_name,
            identity,
            duration_secs: args.lease_duration,
            grace_secs: (args.lease_duration / 3).max(1),
        },
        leading,
        work,
        telemetry::shutdown_signal(),
    )
    .await;
    tracing::info!("shutting down");
    stop.cancel();
    index_task.abort();
    let _ = admin_task.await;
    result
}
