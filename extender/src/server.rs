//! The HTTP API (`POST /filter`, `POST /prioritize`) and the process's run loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prometheus_client::registry::Registry;
use spotkube_shared::admin::{self, Readiness};
use spotkube_shared::telemetry;
use spotkube_shared::tls::ReloadingCert;

use crate::cache::Cluster;
use crate::config::Args;
use crate::metrics::{Metrics, Verb, VerbLabels};
use crate::verbs;
use crate::watch;

#[derive(Clone)]
pub struct AppState {
    pub cluster: Cluster,
    pub metrics: Metrics,
}

/// The extender API router.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Arc::new(state))
}

async fn filter(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    answer(&state, Verb::Filter, &body, verbs::filter)
}

async fn prioritize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    answer(&state, Verb::Prioritize, &body, verbs::prioritize)
}

fn answer(
    state: &AppState,
    verb: Verb,
    body: &[u8],
    handle: fn(&Cluster, &[u8]) -> verbs::Answer,
) -> Response {
    let started = Instant::now();
    match handle(&state.cluster, body) {
        Ok((json, outcome)) => {
            state
                .metrics
                .record(verb, started.elapsed().as_secs_f64(), &outcome);
            if outcome.no_ranking {
                tracing::debug!("prioritize without a ranking: neutral scores");
            }
            ([(header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        Err(e) => {
            state
                .metrics
                .bad_requests
                .get_or_create(&VerbLabels { verb })
                .inc();
            tracing::warn!(?verb, error = %e, "bad extender request");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}

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

    let admin_router = admin::router(Arc::new(registry), readiness);
    let admin = tokio::spawn(admin::serve(
        args.admin_listen,
        admin_router,
        telemetry::shutdown_signal(),
    ));

    let app = router(AppState { cluster, metrics }, args.max_body_bytes);
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        telemetry::shutdown_signal().await;
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            // Reloads on Secret updates (the `..data` symlink swap) without a restart.
            let reloading = ReloadingCert::load(cert, key)?;
            let _watch = reloading.watch(Duration::from_secs(60))?;
            tracing::info!(addr = %args.listen, "extender listening (TLS)");
            axum_server::bind_rustls(args.listen, reloading.axum_config())
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
        _ => {
            tracing::info!(addr = %args.listen, "extender listening (plain HTTP)");
            axum_server::bind(args.listen)
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
    }
    admin.await??;
    Ok(())
}
