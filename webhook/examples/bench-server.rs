//! The webhook's HTTPS server exactly as `spotkube-webhook` runs it, but with a fixed
//! Namespace cache (`demo` opted in) instead of a watch, so it can be benchmarked
//! without a cluster. Used by `webhook/bench/run.sh`.
//!
//! Usage: bench-server LISTEN TLS_CERT TLS_KEY

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::ObjectMeta;
use prometheus_client::registry::Registry;
use spotkube_shared::policy::Policy;
use spotkube_shared::telemetry::{self, LogFormat};
use spotkube_shared::tls::ReloadingCert;
use spotkube_webhook::metrics::Metrics;
use spotkube_webhook::mutate::{self, MutationConfig};
use spotkube_webhook::namespaces::NamespaceCache;
use spotkube_webhook::{AdmissionState, DEFAULT_MAX_BODY_BYTES};

/// The program's allocator, so the figures are the program's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::install_crypto_provider();
    telemetry::init_logging(LogFormat::Json);
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: bench-server LISTEN TLS_CERT TLS_KEY"
    );
    let cert = ReloadingCert::load(&args[2], &args[3])?;
    let demo = Namespace {
        metadata: ObjectMeta {
            name: Some("demo".into()),
            annotations: Some([("spotkube.io/enabled".to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut registry = Registry::default();
    let state = Arc::new(AdmissionState {
        config: MutationConfig {
            tolerations: vec![mutate::parse_toleration("spot=true:NoSchedule")?],
            scheduler_name: Some("spotkube-scheduler".into()),
            ..MutationConfig::default()
        },
        defaults: Policy::default(),
        namespaces: NamespaceCache::fixed([demo]),
        metrics: Metrics::register(&mut registry),
    });
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        telemetry::shutdown_signal().await;
        shutdown.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let listener = std::net::TcpListener::bind(&args[1])?;
    spotkube_webhook::serve(
        listener,
        cert.axum_config(),
        spotkube_webhook::router(state, DEFAULT_MAX_BODY_BYTES),
        handle,
    )
    .await?;
    Ok(())
}
