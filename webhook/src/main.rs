//! spotkube-webhook: the mutating admission webhook (see the `spotkube_webhook` library).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use spotkube_shared::admin::{self, Readiness};
use spotkube_shared::policy::Policy;
use spotkube_shared::telemetry::{self, LogFormat};
use spotkube_shared::tls::ReloadingCert;
use spotkube_webhook::metrics::Metrics;
use spotkube_webhook::mutate::{self, MutationConfig};
use spotkube_webhook::namespaces::NamespaceCache;
use spotkube_webhook::{AdmissionState, DEFAULT_MAX_BODY_BYTES};

#[derive(Debug, Parser)]
#[command(
    name = "spotkube-webhook",
    version,
    about = "spotkube's mutating admission webhook"
)]
struct Args {
    /// HTTPS address for POST /mutate.
    #[arg(long, env = "SPOTKUBE_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz, /metrics.
    #[arg(long, env = "SPOTKUBE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    admin_listen: SocketAddr,
    /// PEM certificate chain (reloaded when it changes).
    #[arg(long, env = "SPOTKUBE_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key (reloaded when it changes).
    #[arg(long, env = "SPOTKUBE_TLS_KEY")]
    tls_key: PathBuf,
    /// Re-read the certificate at least this often, besides file events.
    #[arg(long, env = "SPOTKUBE_TLS_RECHECK", default_value = "60s", value_parser = humantime::parse_duration)]
    tls_recheck: Duration,
    /// Set this schedulerName on opted-in pods that are not bound for Fargate.
    #[arg(long, env = "SPOTKUBE_SCHEDULER_NAME")]
    scheduler_name: Option<String>,
    /// A toleration for a spot taint, KEY[=VALUE]:EFFECT (repeat, or comma-separate in env).
    #[arg(long, env = "SPOTKUBE_SPOT_TOLERATION", value_delimiter = ',', value_parser = mutate::parse_toleration)]
    spot_toleration: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Node label KEY=VALUE that marks spot capacity (repeat; default both Karpenter's and EKS's).
    #[arg(long, env = "SPOTKUBE_SPOT_NODE_LABEL", value_delimiter = ',', value_parser = parse_label)]
    spot_node_label: Vec<(String, String)>,
    /// Weight of the preferred spot node affinity (1-100).
    #[arg(long, env = "SPOTKUBE_PREFERRED_WEIGHT", default_value_t = 50, value_parser = clap::value_parser!(i32).range(1..=100))]
    preferred_weight: i32,
    /// Topology key for `spotkube.io/spread: capacity-types`.
    #[arg(long, env = "SPOTKUBE_CAPACITY_TOPOLOGY_KEY", default_value = spotkube_shared::labels::KARPENTER_CAPACITY_TYPE)]
    capacity_topology_key: String,
    /// Largest AdmissionReview body accepted (bytes); larger → 413.
    #[arg(long, env = "SPOTKUBE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    #[arg(long, env = "SPOTKUBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::install_crypto_provider();
    let args = Args::parse();
    telemetry::init_logging(args.log_format);

    let cert = ReloadingCert::load(&args.tls_cert, &args.tls_key)
        .context("loading the serving certificate")?;
    let _cert_watch = cert
        .watch(args.tls_recheck)
        .context("watching the serving certificate")?;

    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client")?;
    let readiness = Readiness::default();
    let (namespaces, watch) = NamespaceCache::watch(client, readiness.gate("namespace-cache"));
    tokio::spawn(watch);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let mut config = MutationConfig {
        preferred_weight: args.preferred_weight,
        tolerations: args.spot_toleration,
        scheduler_name: args.scheduler_name,
        capacity_topology_key: args.capacity_topology_key,
        ..MutationConfig::default()
    };
    if !args.spot_node_label.is_empty() {
        config.spot_labels = args.spot_node_label;
    }
    let state = Arc::new(AdmissionState {
        config,
        defaults: Policy::default(),
        namespaces,
        metrics,
    });

    let handle = axum_server::Handle::new();
    let admin = tokio::spawn(admin::serve(
        args.admin_listen,
        admin::router(Arc::new(registry), readiness),
        telemetry::shutdown_signal(),
    ));
    let shutdown = handle.clone();
    tokio::spawn(async move {
        telemetry::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });

    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, "spotkube-webhook serving");
    spotkube_webhook::serve(
        listener,
        cert.axum_config(),
        spotkube_webhook::router(state, args.max_body_bytes),
        handle,
    )
    .await
    .context("serving")?;
    let _ = admin.await;
    Ok(())
}
