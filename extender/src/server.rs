//! The HTTP API: `POST /filter` and `POST /prioritize`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tracing::field::Empty;

use crate::cache::Cluster;
use crate::metrics::{Metrics, Verb, VerbLabels};
use crate::verbs;

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
