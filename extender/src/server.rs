//! The HTTP API: `POST /filter` and `POST /prioritize`, with a body size limit and a
//! limit on calls in flight.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::Handle;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;
use tracing::field::Empty;

use crate::cache::Cluster;
use crate::metrics::{Metrics, Verb, VerbLabels};
use crate::verbs;

#[derive(Clone)]
pub struct AppState {
    pub cluster: Cluster,
    pub metrics: Metrics,
}

/// The default `--max-body-bytes`, sized for the shipped `nodeCacheCapable: true`, where
/// the scheduler sends the Pod and node *names*, never Node objects:
/// - the Pod: at most 3 MiB of JSON, the API server's limit on a request body (the same
///   bound the webhook uses for an AdmissionReview);
/// - the names: a node name is a DNS subdomain of at most 253 bytes, 256 with its JSON
///   quotes and comma; 5,000 nodes (Kubernetes' largest supported cluster) make 1.22 MiB
///   at worst (EKS's `ip-10-0-12-34.ec2.internal` names: about 140 KiB).
///
/// That is 4.22 MiB at worst; 6 MiB leaves room for the envelope. Full Node objects
/// (`nodeCacheCapable: false`) need about 32 MiB for 5,000 nodes: raise the flag for that.
pub const DEFAULT_MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// The default `--max-concurrent-requests`. A scheduler calls its extenders one pod at a
/// time (filter, then prioritize), so its calls never overlap; 16 leaves room for
/// several schedulers while bounding request bodies in memory at 16 × the body limit
/// (96 MiB by default, against the manifests' 512 MiB memory limit).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u16 = 16;

/// What the API accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Larger bodies are answered 413.
    pub max_body_bytes: usize,
    /// Calls beyond this many in flight are answered 503 at once.
    pub max_concurrent_requests: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
        }
    }
}

/// The extender API router.
pub fn router(state: AppState, limits: Limits) -> Router {
    let in_flight = InFlight {
        permits: Arc::new(Semaphore::new(limits.max_concurrent_requests.into())),
        overloaded: state.metrics.overloaded.clone(),
    };
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route_layer(middleware::from_fn_with_state(in_flight, limit_in_flight))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(Arc::new(state))
}

/// Serves `app` on an already bound listener (HTTPS with `tls`, else plain HTTP) until
/// `handle` is told to shut down. HTTP/1.1 keep-alive (kube-scheduler reuses its
/// connection to an extender), and `TCP_NODELAY` on every accepted socket:
/// axum-server's default acceptor leaves Nagle on, and a reply written in more than
/// one segment would then wait for the scheduler's delayed ACK.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    app: Router,
    handle: Handle<std::net::SocketAddr>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let server = axum_server::from_tcp(listener)?.handle(handle);
    match tls {
        Some(tls) => {
            server
                .acceptor(RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor::new()))
                .serve(app.into_make_service())
                .await
        }
        None => {
            server
                .acceptor(NoDelayAcceptor::new())
                .serve(app.into_make_service())
                .await
        }
    }
}

#[derive(Clone)]
struct InFlight {
    permits: Arc<Semaphore>,
    overloaded: Counter,
}

/// Answers 503 at once when the limit is reached, before the body is read. Queueing
/// would not help: the scheduler's `httpTimeout` runs while a call waits, and with
/// `ignorable: true` it schedules without the extender either way.
async fn limit_in_flight(
    State(in_flight): State<InFlight>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = in_flight.permits.try_acquire() else {
        in_flight.overloaded.inc();
        tracing::warn!("extender call refused: too many in flight");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many concurrent requests\n",
        )
            .into_response();
    };
    next.run(request).await
}

async fn filter(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    answer(&state, Verb::Filter, &body, verbs::filter)
}

async fn prioritize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    answer(&state, Verb::Prioritize, &body, verbs::prioritize)
}

/// Answers one call inside its span (`verb`, and `pod` as `namespace/name` once the
/// body is parsed), so the lines logged inside do not repeat them.
fn answer(
    state: &AppState,
    verb: Verb,
    body: &[u8],
    handle: fn(&Cluster, &[u8]) -> verbs::Answer,
) -> Response {
    let span = tracing::info_span!("extender", verb = verb.as_str(), pod = Empty);
    // No await below: holding the guard is fine.
    let _entered = span.enter();
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
            tracing::warn!(error = %e, "bad extender request");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}
