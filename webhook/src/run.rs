//! The process: the Namespace watch, the admin port and the TLS server, until SIGTERM
//! and the drain window after it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use spotkube_shared::admin::{self, Gate, Readiness};
use spotkube_shared::policy::Policy;
use spotkube_shared::telemetry;
use spotkube_shared::tls::ReloadingCert;

use crate::admission::AdmissionState;
use crate::config::Args;
use crate::metrics::Metrics;
use crate::namespaces::NamespaceCache;

/// How long in-flight requests may take to finish once the drain window is over.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(10);

/// Runs the webhook until SIGTERM, then drains (see [`drain_on_signal`]).
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
    let serving = readiness.gate("serving");

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    cert.register_metrics(registry.sub_registry_with_prefix("spotkube_webhook"));
    let state = Arc::new(AdmissionState {
        config: args.mutation_config(),
        defaults: Policy::default(),
        namespaces,
        metrics,
    });

    // The admin port outlives the drain window: it reports "not ready" during it.
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(admin::serve(
        args.admin_listen,
        admin::router(Arc::new(registry), readiness),
        async {
            let _ = admin_stopped.await;
        },
    ));
    let handle = axum_server::Handle::new();
    tokio::spawn(drain_on_signal(
        handle.clone(),
        serving.clone(),
        args.shutdown_drain,
    ));

    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    serving.open();
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, "spotkube-webhook serving");
    crate::serve(
        listener,
        cert.axum_config(),
        crate::router(state, args.max_body_bytes),
        handle,
    )
    .await
    .context("serving")?;
    let _ = admin_stop.send(());
    // The admin server's own error does not matter once the webhook has stopped.
    let _ = admin.await;
    Ok(())
}

/// On SIGTERM: closes the `serving` readiness gate at once, so the replica leaves the
/// Service's endpoints, and keeps answering for `drain` while the API servers notice;
/// only then stops accepting and gives in-flight requests [`IN_FLIGHT_GRACE`]. A webhook
/// that stopped at the signal would see calls for a while that nobody answers: pods
/// admitted unmutated (`failurePolicy: Ignore`) during every rollout.
async fn drain_on_signal(
    handle: axum_server::Handle<std::net::SocketAddr>,
    serving: Gate,
    drain: Duration,
) {
    telemetry::shutdown_signal().await;
    serving.close();
    tracing::info!(drain = ?drain, "shutting down: not ready, still serving during the drain window");
    tokio::time::sleep(drain).await;
    tracing::info!("drain window over: finishing in-flight requests");
    handle.graceful_shutdown(Some(IN_FLIGHT_GRACE));
}
