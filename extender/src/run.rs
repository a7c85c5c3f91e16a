//! The process: the watches feeding the cluster view, the admin port and the extender
//! API (TLS when configured), until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use spotkube_shared::admin::{self, Readiness};
use spotkube_shared::telemetry;
use spotkube_shared::tls::ReloadingCert;

use crate::cache::Cluster;
use crate::config::Args;
use crate::metrics::Metrics;
use crate::server::{AppState, router, serve};
use crate::watch;

/// Runs the extender until SIGTERM: watches, API (TLS when configured) and admin port.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let cluster = Cluster::new(args.capacity_type_label.clone());

    let (ns, name) = args.ranking_configmap.clone();
    tokio::spawn(watch::nodes(
        client.clone(),
        cluster.clone(),
        metrics.clone(),
        readiness.gate("node cache"),
    ));
    tokio::spawn(watch::namespaces(
        client.clone(),
        cluster.clone(),
        readiness.gate("namespace cache"),
    ));
    tokio::spawn(watch::ranking(
        client,
        ns,
        name,
        cluster.clone(),
        metrics.clone(),
        readiness.gate("ranking watch"),
    ));

    // Loaded before the admin port starts, so its metrics are registered; the extender
    // does not start without a certificate it was told to serve.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let reloading = ReloadingCert::load(cert, key)?;
            reloading.register_metrics(registry.sub_registry_with_prefix("spotkube_extender"));
            Some(reloading)
        }
        _ => None,
    };

    let admin_router = admin::router(Arc::new(registry), readiness);
    let admin = tokio::spawn(admin::serve(
        args.admin_listen,
        admin_router,
        telemetry::shutdown_signal(),
    ));

    let app = router(AppState { cluster, metrics }, args.limits());
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        telemetry::shutdown_signal().await;
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let listener = std::net::TcpListener::bind(args.listen)?;
    let _watch = match tls {
        Some(reloading) => {
            // Reloads on Secret updates (the `..data` symlink swap) without a restart.
            let watch = reloading.watch(args.tls_recheck)?;
            tracing::info!(addr = %args.listen, "extender listening (TLS)");
            serve(listener, Some(reloading.axum_config()), app, handle).await?;
            Some(watch)
        }
        None => {
            tracing::info!(addr = %args.listen, "extender listening (plain HTTP)");
            serve(listener, None, app, handle).await?;
            None
        }
    };
    admin.await??;
    Ok(())
}
