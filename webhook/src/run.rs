//! The process: the Namespace watch, the admin port and the TLS server, until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use spotkube_shared::admin::{self, Readiness};
use spotkube_shared::policy::Policy;
use spotkube_shared::telemetry;
use spotkube_shared::tls::ReloadingCert;

use crate::admission::AdmissionState;
use crate::config::Args;
use crate::metrics::Metrics;
use crate::namespaces::NamespaceCache;

/// Runs the webhook until SIGTERM, then lets in-flight requests finish (up to 10 s).
pub async fn run(args: Args) -> anyhow::Result<()> {
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
    let state = Arc::new(AdmissionState {
        config: args.mutation_config(),
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
    crate::serve(
        listener,
        cert.axum_config(),
        crate::router(state, args.max_body_bytes),
        handle,
    )
    .await
    .context("serving")?;
    // The admin server stops on the same signal; its own error does not matter here.
    let _ = admin.await;
    Ok(())
}
