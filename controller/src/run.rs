//! `spotkube-controller run`: wires the process together. Every replica serves its
//! admin endpoints and keeps the Node index warm; only the leader acts, and
//! [`Leader::lead`] lists everything it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use spotkube_shared::admin::{self, Gate, Readiness};
use spotkube_shared::ranking::Criteria;
use spotkube_shared::telemetry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::act::Actor;
use crate::config::RunArgs;
use crate::context::Context;
use crate::decide::Planning;
use crate::error::{Error, KubeResultExt, Result};
use crate::intake::Intake;
use crate::leader::{self, LeaderConfig};
use crate::metrics::Metrics;
use crate::nodes_index::NodesIndex;
use crate::notify;
use crate::origin::Origin;
use crate::pricing::refresher::{self, RefreshMetrics, Target};
use crate::pricing::{AnySource, LatestBook};
use crate::reconcile::{self, savings, unscheduled};
use crate::savings::prices::PriceFeed;
use crate::supervisor::Term;

/// Runs until SIGTERM / Ctrl-C, then stops the leader's work and releases the Lease.
pub async fn run(args: RunArgs, admin_listen: SocketAddr) -> Result<()> {
    let message_deadline = args.message_deadline.unwrap_or(args.visibility_timeout / 2);
    if message_deadline >= args.visibility_timeout {
        return Err(Error::Invalid(format!(
            "--message-deadline ({message_deadline:?}) must be shorter than --visibility-timeout ({:?}): a message still at work would be redelivered",
            args.visibility_timeout
        )));
    }
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)
        .kube("connect", "the API server (KUBECONFIG or in-cluster)")?;
    let client = kube::Client::try_from(config.clone())
        .kube("connect", "the API server (KUBECONFIG or in-cluster)")?;
    let mut eviction_config = config;
    eviction_config.default_retry = false;
    let eviction_client = kube::Client::try_from(eviction_config)
        .kube("connect", "the API server (KUBECONFIG or in-cluster)")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "spotkube-controller".into());
        format!("{host}-{}", std::process::id())
    });

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let metrics_leader = metrics.leader.clone();
    let ranking = match args.publish_ranking {
        true => Some(RankingJob {
            source: Arc::new(args.ranking.source(&mut registry).await?),
            criteria: args.ranking.criteria(),
            interval: args.ranking_interval.unwrap_or(refresher::DEFAULT_INTERVAL),
            target: Target::from(args.ranking_configmap.clone()),
            metrics: RefreshMetrics::register(&mut registry),
        }),
        false => None,
    };
    // The ranking refresh gathers prices; the savings loop reads them from here.
    let latest = LatestBook::default();
    let fallback_on_demand = crate::cli::savings::fallback_on_demand(
        &crate::pricing::snapshot::SnapshotLocation::from_flag(args.ranking.snapshot.clone()),
        args.ranking.region.as_deref(),
    )?;
    let savings = SavingsJob {
        settings: savings::Settings {
            every: args.savings_interval,
            max_workloads: args.savings_max_workloads,
        },
        source: ranking.as_ref().map(|job| job.source.clone()),
        fallback_on_demand,
        fargate: args.fargate.rates(),
    };
    let readiness = Readiness::default();
    let nodes_synced = readiness.gate("nodes index");
    // Reported, never gating: a replica that cannot reach SQS is no better restarted.
    let failing = metrics.sqs_receive_failing.clone();
    readiness.advisory("sqs receive", move || failing.get() != 0);
    // Leader and standby alike are ready once their Node index is: /readyz says
    // nothing of leadership (spotkube_controller_leader does).

    // What every replica runs, leader or not.
    let stop = CancellationToken::new();
    let mut process = JoinSet::new();
    let admin_stop = stop.clone();
    process.spawn(async move {
        let router = admin::router(Arc::new(registry), readiness);
        if let Err(error) = admin::serve(admin_listen, router, admin_stop.cancelled_owned()).await {
            tracing::error!(%error, "admin endpoints stopped");
        }
    });
    let nodes = NodesIndex::default();
    let index_watch = process.spawn(nodes.clone().run(client.clone(), nodes_synced.clone()));

    let sqs = aws_sdk_sqs::Client::new(
        &crate::aws::sdk_config(args.ranking.region.clone(), args.aws_disable_retries).await,
    );
    let notifications = notify::from_args(&args, metrics.clone())?;
    let mut ctx = Context::new(client.clone(), Some(identity.clone()), metrics, nodes, sqs)
        .with_eviction_client(eviction_client)
        .with_ice_ttl(args.capacity.ice_ttl);
    if let Some(settings) = args.failover.settings() {
        ctx = ctx.with_fargate(settings);
    }
    let aws_config =
        crate::aws::sdk_config(args.ranking.region.clone(), args.aws_disable_retries).await;
    let capacity = match args.capacity.enabled {
        true => Some(CapacityJob {
            autoscaling: aws_sdk_autoscaling::Client::new(&aws_config),
            ec2: aws_sdk_ec2::Client::new(&aws_config),
            settings: reconcile::capacity::Settings {
                discovery: crate::capacity::pools::DiscoveryConfig {
                    cluster_name: args.cluster_name.clone(),
                    page_size: None,
                },
                timeout: args.capacity.capacity_timeout,
                max_drains: usize::from(args.capacity.capacity_max_drains),
                rebalance_expiry: args.capacity.rebalance_expiry,
                stable_window: args.capacity.fallback_stable_window,
                every: args.capacity.capacity_interval,
                ranking_configmap: args.ranking_configmap.clone(),
            },
        }),
        false => None,
    };
    if let Some((notifier, sender)) = notifications {
        ctx = ctx.with_notifier(notifier);
        // Drains what is queued when `stop` comes, after the leader's work has ended.
        process.spawn(sender.run(stop.clone()));
    }
    let leader = Leader {
        ctx,
        nodes_synced,
        queue_url: args.queue_url.clone(),
        visibility_timeout: args.visibility_timeout,
        reconcile_every: args.scale_back_interval,
        ranking,
        latest,
        savings,
        planning: Planning {
            scheduled_change_lead: args.scheduled_change_lead,
        },
        concurrency: usize::from(args.max_concurrent_messages),
        message_deadline,
        origin: Origin {
            account: args.account_id.clone(),
            region: args.ranking.region.clone(),
        },
        unscheduled: unscheduled::Settings {
            scheduler_name: args.scheduler_name.clone(),
            after: args.unscheduled_after,
        },
        pending: reconcile::pending::Settings {
            after: args.capacity.pending_after,
            scale_up: args.capacity.scale_up_pending,
        },
        extender: match &args.extender_url {
            Some(url) => Some(reconcile::extender_health::Settings {
                url: url.trim_end_matches('/').to_string(),
                ca_pem: match &args.extender_ca_file {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        Error::Invalid(format!("--extender-ca-file {}: {e}", path.display()))
                    })?),
                    None => None,
                },
                every: args.extender_probe_interval,
                scheduler_name: args.scheduler_name.clone(),
                window: Default::default(),
            }),
            None => None,
        },
        external: reconcile::external_signals::Settings {
            signals: args.external_signals(),
            node_selector: args.external_signal_node_selector.clone(),
        },
        capacity,
    };
    let result = leader::run_while_leader(
        client,
        LeaderConfig {
            namespace: args.lease_namespace,
            lease_name: args.lease_name,
            identity,
            duration_secs: args.lease_duration,
            grace_secs: (args.lease_duration / 3).max(1),
        },
        metrics_leader,
        |token| leader.clone().lead(token),
        telemetry::shutdown_signal(),
    )
    .await;
    tracing::info!("shutting down");
    // The admin server drains on `stop`; the index watch never ends on its own.
    stop.cancel();
    index_watch.abort();
    while process.join_next().await.is_some() {}
    result
}

/// The price ranking's refresh, when `--publish-ranking` is on.
#[derive(Clone)]
struct RankingJob {
    source: Arc<AnySource>,
    criteria: Criteria,
    interval: Duration,
    /// The ConfigMap it is published to (`--ranking-configmap`).
    target: Target,
    metrics: RefreshMetrics,
}

/// The capacity loop's client and settings, when `--capacity` is on.
#[derive(Clone)]
struct CapacityJob {
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    settings: reconcile::capacity::Settings,
}

/// The savings loop's settings and price inputs (a fresh [`PriceFeed`] per term).
#[derive(Clone)]
struct SavingsJob {
    settings: savings::Settings,
    source: Option<Arc<AnySource>>,
    fallback_on_demand: std::collections::BTreeMap<String, f64>,
    fargate: crate::savings::compute::FargateRates,
}

/// Everything the leader needs to start a term.
#[derive(Clone)]
struct Leader {
    ctx: Context,
    nodes_synced: Gate,
    queue_url: String,
    visibility_timeout: Duration,
    reconcile_every: Duration,
    ranking: Option<RankingJob>,
    /// The ranking refresh's last price book, for the savings loop.
    latest: LatestBook,
    savings: SavingsJob,
    origin: Origin,
    unscheduled: unscheduled::Settings,
    pending: reconcile::pending::Settings,
    /// The extender probe, when `--extender-url` is set.
    extender: Option<reconcile::extender_health::Settings>,
    external: reconcile::external_signals::Settings,
    capacity: Option<CapacityJob>,
    planning: Planning,
    concurrency: usize,
    message_deadline: Duration,
}

impl Leader {
    /// One term of leadership: every loop the leader runs, by name, until `token`
    /// is cancelled (leadership lost, or shutdown).
    async fn lead(self, token: CancellationToken) -> Result<()> {
        // Never map instances to nodes on a partial index.
        while !self.nodes_synced.is_open() {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let mut term = Term::new(token.clone(), self.ctx.metrics.clone());
        let actor = Actor::new(self.ctx.clone(), term.tasks().clone());
        let every = self.reconcile_every;
        let pending = reconcile::pending::PendingLoop {
            ctx: self.ctx.clone(),
            settings: self.pending,
            // Scale-up goes through the capacity loop's client: none without `--capacity`.
            scale_up: self
                .capacity
                .as_ref()
                .map(|job| reconcile::pending::ScaleUpJob {
                    autoscaling: job.autoscaling.clone(),
                    discovery: job.settings.discovery.clone(),
                    timeout: job.settings.timeout,
                }),
        };
        let capacity = self.capacity.map(|job| reconcile::capacity::CapacityLoop {
            actor: actor.clone(),
            autoscaling: job.autoscaling,
            ec2: job.ec2,
            settings: job.settings,
            wake: Arc::default(),
        });
        let intake = Intake {
            actor: actor.clone(),
            queue_url: self.queue_url,
            visibility_timeout: self.visibility_timeout,
            origin: self.origin,
            planning: self.planning,
            concurrency: self.concurrency,
            message_deadline: self.message_deadline,
            capacity_wake: capacity.as_ref().map(|c| c.wake.clone()),
        };
        term.start("intake", intake.run(token.clone()));
        if let Some(capacity) = capacity {
            term.start("capacity", capacity.run(token.clone()));
        }
        term.start("pending", pending.run(token.clone()));
        term.start(
            "drain",
            reconcile::drain::run(actor.clone(), every, token.clone()),
        );
        if self.external.signals.any() {
            term.start(
                "external-signals",
                reconcile::external_signals::run(actor.clone(), self.external, token.clone()),
            );
        }
        term.start(
            "scale-back",
            reconcile::scale_back::run(actor, every, token.clone()),
        );
        term.start(
            "unscheduled",
            unscheduled::run(self.ctx.clone(), self.unscheduled, token.clone()),
        );
        if let Some(settings) = self.extender {
            term.start(
                "extender-health",
                reconcile::extender_health::run(self.ctx.clone(), settings, token.clone()),
            );
        }
        if let Some(settings) = self.ctx.fargate.clone() {
            term.start(
                "fargate",
                reconcile::fargate::run(self.ctx.clone(), settings, token.clone()),
            );
        }
        term.start(
            "namespace-labels",
            reconcile::namespace_labels::run(self.ctx.clone(), token.clone()),
        );
        let job = self.savings;
        term.start(
            "savings",
            reconcile::savings::run(
                self.ctx.clone(),
                job.settings,
                PriceFeed::new(
                    self.latest.clone(),
                    job.source,
                    job.fallback_on_demand,
                    job.fargate,
                ),
                token.clone(),
            ),
        );
        if let Some(job) = self.ranking {
            // The ranking ConfigMap has one writer: the leader.
            term.start(
                "ranking",
                reconcile::ranking::run(
                    self.ctx.client.clone(),
                    job.source,
                    job.criteria,
                    job.interval,
                    job.target,
                    job.metrics,
                    self.latest,
                    self.ctx.ice.clone(),
                    token,
                ),
            );
        }
        term.run().await
    }
}
