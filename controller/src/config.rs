//! The controller's command line: `run` (the default), `state`, `rank` and `savings`. Every flag
//! has an environment twin (`SPOTKUBE_…`), for manifests and Helm values.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use spotkube_shared::telemetry::LogFormat;

use crate::cli;
use crate::notify::WebhookUrl;

#[derive(Parser)]
#[command(
    name = "spotkube-controller",
    version,
    about,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[arg(long, env = "SPOTKUBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Plain-HTTP /healthz /readyz /metrics (`run`).
    #[arg(
        long,
        env = "SPOTKUBE_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    pub admin_listen: SocketAddr,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run`'s flags, so that `spotkube-controller --queue-url URL` runs.
    #[command(flatten)]
    pub run: Option<RunArgs>,
}

// Parsed once at startup: the size of `Run`'s flags costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Consume interruption events and act on them (the default).
    Run(RunArgs),
    /// Show or change a workload's spotkube state, or list capacity requests, for operators.
    State(cli::state::StateArgs),
    /// Print the spot price ranking per AZ (table or the ranking JSON).
    Rank(cli::rank::RankArgs),
    /// Print what opted-in workloads cost now and on on-demand (table or JSON).
    Savings(cli::savings::SavingsArgs),
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The SQS queue EventBridge delivers interruption events to.
    #[arg(long, env = "SPOTKUBE_QUEUE_URL")]
    pub queue_url: String,
    /// Publish the price ranking ConfigMap (leader only), from `--source`.
    #[arg(long, env = "SPOTKUBE_PUBLISH_RANKING")]
    pub publish_ranking: bool,
    /// `namespace/name` of the ranking ConfigMap (the extender's `--ranking-configmap`).
    #[arg(long, env = "SPOTKUBE_RANKING_CONFIGMAP", default_value = spotkube_shared::config::DEFAULT_RANKING_CONFIGMAP, value_parser = spotkube_shared::config::object_ref)]
    pub ranking_configmap: (String, String),
    /// How often to refresh the ranking (default 10m).
    #[arg(long, env = "SPOTKUBE_RANKING_INTERVAL", value_parser = spotkube_shared::config::positive_duration)]
    pub ranking_interval: Option<Duration>,
    /// The ranking's price source and `--region` (shared with `rank`).
    #[command(flatten)]
    pub ranking: cli::rank::RankArgs,
    /// How long a received message stays invisible while being acted on.
    #[arg(long, env = "SPOTKUBE_VISIBILITY_TIMEOUT", default_value = "60s", value_parser = spotkube_shared::config::positive_duration)]
    pub visibility_timeout: Duration,
    /// How many messages are worked on at once.
    #[arg(long, env = "SPOTKUBE_MAX_CONCURRENT_MESSAGES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_messages: u16,
    /// How long one message may take before it is left for redelivery; shorter than
    /// the visibility timeout, so a redelivery never overlaps a message still at work
    /// (default: half the visibility timeout).
    #[arg(long, env = "SPOTKUBE_MESSAGE_DEADLINE", value_parser = spotkube_shared::config::positive_duration)]
    pub message_deadline: Option<Duration>,
    /// How long before an AWS Health scheduled change's start its drain (cordon,
    /// surge, evict) begins; until then the node is only `PreferNoSchedule`.
    #[arg(long, env = "SPOTKUBE_SCHEDULED_CHANGE_LEAD", default_value = "15m", value_parser = spotkube_shared::config::positive_duration)]
    pub scheduled_change_lead: Duration,
    /// Disable the AWS SDK's retries (tests against moto).
    #[arg(long, env = "SPOTKUBE_AWS_DISABLE_RETRIES")]
    pub aws_disable_retries: bool,
    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        env = "SPOTKUBE_LEASE_NAMESPACE",
        default_value = "spotkube-system"
    )]
    pub lease_namespace: String,
    #[arg(
        long,
        env = "SPOTKUBE_LEASE_NAME",
        default_value = "spotkube-controller"
    )]
    pub lease_name: String,
    /// Seconds a lease stays valid after its last renewal (failover time).
    #[arg(long, env = "SPOTKUBE_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// This replica's identity (default: the pod name from POD_NAME, else HOSTNAME + pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How often to look for scaled surges whose hold is over.
    #[arg(long, env = "SPOTKUBE_SCALE_BACK_INTERVAL", default_value = "10s", value_parser = spotkube_shared::config::positive_duration)]
    pub scale_back_interval: Duration,
    /// The AWS account events must come from; events naming another account are
    /// dropped (and counted). `--region`, when given, limits events the same way.
    #[arg(long, env = "SPOTKUBE_ACCOUNT_ID")]
    pub account_id: Option<String>,
    /// The scheduler opted-in pods name (the webhook's `--scheduler-name`).
    #[arg(
        long,
        env = "SPOTKUBE_SCHEDULER_NAME",
        default_value = "spotkube-scheduler"
    )]
    pub scheduler_name: String,
    /// How long a pod of that scheduler may wait unscheduled before the controller
    /// warns that the scheduler is not running.
    #[arg(long, env = "SPOTKUBE_UNSCHEDULED_AFTER", default_value = "60s", value_parser = spotkube_shared::config::positive_duration)]
    pub unscheduled_after: Duration,
    /// The extender's URL prefix (as the scheduler configuration names it). When set,
    /// the leader probes it and, while it does not answer, counts the pods spotkube's
    /// scheduler binds without it (`spotkube_controller_pods_scheduled_without_extender_total`).
    #[arg(long, env = "SPOTKUBE_EXTENDER_URL")]
    pub extender_url: Option<String>,
    /// A PEM CA bundle for an HTTPS `--extender-url`.
    #[arg(long, env = "SPOTKUBE_EXTENDER_CA_FILE", requires = "extender_url")]
    pub extender_ca_file: Option<std::path::PathBuf>,
    /// How often the leader probes `--extender-url`.
    #[arg(long, env = "SPOTKUBE_EXTENDER_PROBE_INTERVAL", default_value = "10s", value_parser = spotkube_shared::config::positive_duration)]
    pub extender_probe_interval: Duration,
    /// A Slack incoming webhook to notify (a secret: its value is never shown).
    #[arg(long, env = "SPOTKUBE_SLACK_WEBHOOK_URL", hide_env_values = true, value_parser = WebhookUrl::from_flag)]
    pub slack_webhook_url: Option<WebhookUrl>,
    /// A webhook receiving each notification as JSON (README, "Notifications"; a
    /// secret: its value is never shown).
    #[arg(long, env = "SPOTKUBE_NOTIFY_WEBHOOK_URL", hide_env_values = true, value_parser = WebhookUrl::from_flag)]
    pub notify_webhook_url: Option<WebhookUrl>,
    /// The cluster's name: in notifications, and capacity pools are only the Auto
    /// Scaling groups tagged `kubernetes.io/cluster/<name>=owned|shared`.
    #[arg(long, env = "SPOTKUBE_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Replacement capacity (README, "Replacement capacity").
    #[command(flatten)]
    pub capacity: CapacityArgs,
    /// How often the leader computes the savings metrics (from its watch caches).
    #[arg(long, env = "SPOTKUBE_SAVINGS_INTERVAL", default_value = "60s", value_parser = spotkube_shared::config::positive_duration)]
    pub savings_interval: Duration,
    /// How many workloads get savings series of their own (the most expensive on
    /// on-demand); the rest are summed into `workload="(other)"`.
    #[arg(long, env = "SPOTKUBE_SAVINGS_MAX_WORKLOADS", default_value_t = 100)]
    pub savings_max_workloads: usize,
    /// Fargate's prices for the savings.
    #[command(flatten)]
    pub fargate: cli::savings::FargateArgs,
    /// Fargate failover and recovery (README, "Fargate failover and recovery").
    #[command(flatten)]
    pub failover: FailoverArgs,
    /// Which external disruption signals on Nodes count (README, "Running beside
    /// Karpenter / NTH / Cluster Autoscaler"): comma-separated, `none` for none.
    #[arg(
        long,
        env = "SPOTKUBE_EXTERNAL_SIGNALS",
        value_delimiter = ',',
        default_value = "nth,cluster-autoscaler,karpenter,unreachable",
        value_parser = parse_external_signal
    )]
    pub external_signals: Vec<Option<crate::decide::external::Source>>,
    /// A cordoned spot node counts as a planned drain (opt-in: people cordon for other
    /// reasons; never on on-demand nodes).
    #[arg(long, env = "SPOTKUBE_EXTERNAL_SIGNAL_CORDON")]
    pub external_signal_cordon: bool,
    /// An external signal's deadline when the Node states none (NTH's spot
    /// interruption: 2 minutes; Karpenter's NodeClaim termination timestamp).
    #[arg(long, env = "SPOTKUBE_EXTERNAL_SIGNAL_DEADLINE", default_value = "2m", value_parser = spotkube_shared::config::positive_duration)]
    pub external_signal_deadline: Duration,
    /// Only Nodes matching this label selector are watched for external signals
    /// (e.g. `karpenter.sh/capacity-type=spot`; default: every Node).
    #[arg(long, env = "SPOTKUBE_EXTERNAL_SIGNAL_NODE_SELECTOR")]
    pub external_signal_node_selector: Option<String>,
}

/// Fargate failover and recovery's flags.
#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// A Fargate profile workloads with `fallback: fargate` fail over to:
    /// `NAMESPACES:KEY=VALUE[,KEY=VALUE]` (its namespace patterns, `*` wildcards, and
    /// the labels its selector matches). Repeatable; a namespace goes to the first
    /// profile that covers it. None: no failover (such workloads surge on spot).
    #[arg(
        long = "fargate-profile",
        env = "SPOTKUBE_FARGATE_PROFILES",
        value_name = "NAMESPACES:KEY=VALUE[,KEY=VALUE]"
    )]
    pub profiles: Vec<spotkube_shared::fargate::FargateProfiles>,
    /// How long a workload stays on Fargate before spot is tried again (per workload:
    /// `spotkube.io/fargate-cooldown`).
    #[arg(long, env = "SPOTKUBE_FARGATE_COOLDOWN", default_value = "45m", value_parser = spotkube_shared::config::positive_duration)]
    pub fargate_cooldown: Duration,
    /// A failed recovery waits this × 2^failures before the next attempt.
    #[arg(long, env = "SPOTKUBE_FARGATE_BACKOFF_BASE", default_value = "15m", value_parser = spotkube_shared::config::positive_duration)]
    pub fargate_backoff_base: Duration,
    /// The longest wait between recovery attempts.
    #[arg(long, env = "SPOTKUBE_FARGATE_BACKOFF_CAP", default_value = "4h", value_parser = spotkube_shared::config::positive_duration)]
    pub fargate_backoff_cap: Duration,
    /// How long a failover may take to be healthy on Fargate before it is abandoned
    /// for a restart on spot (a refusal by Fargate abandons it at once).
    #[arg(long, env = "SPOTKUBE_FARGATE_FAILOVER_TIMEOUT", default_value = "3m", value_parser = spotkube_shared::config::positive_duration)]
    pub fargate_failover_timeout: Duration,
    /// How long a recovery may take to be healthy on spot before it is rolled back.
    #[arg(long, env = "SPOTKUBE_FARGATE_RECOVERY_TIMEOUT", default_value = "5m", value_parser = spotkube_shared::config::positive_duration)]
    pub fargate_recovery_timeout: Duration,
    /// How often the recovery loop looks at the workloads on Fargate.
    #[arg(long, env = "SPOTKUBE_FARGATE_INTERVAL", default_value = "5s", value_parser = spotkube_shared::config::positive_duration)]
    pub fargate_interval: Duration,
}

impl FailoverArgs {
    /// The settings, or `None` when no profile is configured.
    pub fn settings(&self) -> Option<crate::fargate::Settings> {
        let profiles = spotkube_shared::fargate::flatten(&self.profiles);
        (!profiles.is_empty()).then_some(crate::fargate::Settings {
            profiles,
            cooldown: self.fargate_cooldown,
            backoff_base: self.fargate_backoff_base,
            backoff_cap: self.fargate_backoff_cap,
            timeouts: crate::fargate::Timeouts {
                failover: self.fargate_failover_timeout,
                recovery: self.fargate_recovery_timeout,
            },
            interval: self.fargate_interval,
        })
    }
}

/// The capacity loop's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CapacityArgs {
    /// Bring replacement capacity: on a rebalance recommendation or an interruption
    /// warning, ask the node's pool (Auto Scaling groups tagged `spotkube.io/pool`)
    /// for one more node, drain the at-risk node once it is Ready, then terminate it
    /// with the group's desired capacity lowered. `false`: protect workloads only.
    #[arg(long = "capacity", env = "SPOTKUBE_CAPACITY", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// How long a request waits for a Ready replacement before asking the pool's
    /// on-demand group (an interruption waits what its deadline leaves).
    #[arg(long, env = "SPOTKUBE_CAPACITY_TIMEOUT", default_value = "4m", value_parser = spotkube_shared::config::positive_duration)]
    pub capacity_timeout: Duration,
    /// At-risk nodes drained at once after rebalance recommendations (each paired with
    /// a Ready replacement); interruption warnings are never held back.
    #[arg(long, env = "SPOTKUBE_CAPACITY_MAX_DRAINS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub capacity_max_drains: u16,
    /// A rebalance recommendation no capacity could be had for: the node's mark and
    /// taint are removed after this if no interruption follows.
    #[arg(long, env = "SPOTKUBE_REBALANCE_EXPIRY", default_value = "30m", value_parser = spotkube_shared::config::positive_duration)]
    pub rebalance_expiry: Duration,
    /// How long a pool's spot group must be whole (InService = Desired, Ready, no
    /// offering marked unavailable) before its on-demand fallback nodes are removed.
    #[arg(long, env = "SPOTKUBE_FALLBACK_STABLE_WINDOW", default_value = "10m", value_parser = spotkube_shared::config::positive_duration)]
    pub fallback_stable_window: Duration,
    /// How long an offering (type, zone, capacity type) stays marked unavailable after a
    /// capacity error or a spot interruption of it.
    #[arg(long, env = "SPOTKUBE_ICE_TTL", default_value = "3m", value_parser = spotkube_shared::config::positive_duration)]
    pub ice_ttl: Duration,
    /// How often the capacity loop looks at pending requests (it is also woken at once
    /// by each new request).
    #[arg(long, env = "SPOTKUBE_CAPACITY_INTERVAL", default_value = "5s", value_parser = spotkube_shared::config::positive_duration)]
    pub capacity_interval: Duration,
    /// How long an opted-in pod may stay Unschedulable before it gets a Warning Event
    /// (`SpotkubePodUnschedulable`, the scheduler's message) and counts as pending.
    #[arg(long, env = "SPOTKUBE_PENDING_AFTER", default_value = "2m", value_parser = spotkube_shared::config::positive_duration)]
    pub pending_after: Duration,
    /// Raise by one the spot group of the pool such pods need (`auto`: on unless
    /// Karpenter or Cluster Autoscaler is found, re-checked every 5 minutes; off with
    /// `--capacity=false`).
    #[arg(long, env = "SPOTKUBE_SCALE_UP_PENDING", value_enum, default_value_t = crate::reconcile::pending::ScaleUp::Auto)]
    pub scale_up_pending: crate::reconcile::pending::ScaleUp,
}

/// One `--external-signals` value; `none` is no source.
fn parse_external_signal(value: &str) -> Result<Option<crate::decide::external::Source>, String> {
    use clap::ValueEnum;
    match value.trim() {
        "none" | "" => Ok(None),
        other => crate::decide::external::Source::from_str(other, false)
            .map(Some)
            .map_err(|_| {
                format!(
                    "{other:?} is not one of nth, cluster-autoscaler, karpenter, unreachable, none"
                )
            }),
    }
}

impl RunArgs {
    /// The external-signal settings these flags make.
    pub fn external_signals(&self) -> crate::decide::external::Settings {
        crate::decide::external::Settings {
            sources: self.external_signals.iter().flatten().copied().collect(),
            cordon: self.external_signal_cordon,
            default_deadline: self.external_signal_deadline,
            capacity_label: None,
        }
    }
}
