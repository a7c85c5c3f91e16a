//! The webhook's HTTPS server: the `/mutate` route over an already bound TLS listener.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum_server::Handle;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use crate::admission::{self, AdmissionState};

/// The default `--max-body-bytes`: 3 MiB, the API server's own request limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The webhook's HTTPS router: `POST /mutate`.
pub fn router(state: Arc<AdmissionState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/mutate", post(admission::mutate_handler))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Serves `router` over TLS on an already bound listener until `handle` is told to
/// shut down (graceful: in-flight requests finish).
///
/// Accepted sockets get `TCP_NODELAY` (axum-server's default acceptor leaves Nagle on):
/// with Nagle, a response written in more than one segment can wait for the client's
/// delayed ACK, a 40 ms stall on Linux that showed as the tail of pod CREATE latency
/// through kube-apiserver (BENCHMARKS.md, "Admission").
pub async fn serve(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    router: Router,
    handle: Handle<std::net::SocketAddr>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let acceptor = RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor::new());
    axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .handle(handle)
        .serve(router.into_make_service())
        .await
}
