//! spotkube's mutating admission webhook as a library, so the binary and the component
//! tests start the very same server.
//!
//! Which annotations the webhook sees: the Namespace's (from a watch-backed cache) and
//! the Pod's, which are its pod template's. A Deployment's or StatefulSet's *own*
//! metadata annotations are not read at admission time (that would need a cluster-wide
//! watch of every ReplicaSet and Deployment in the webhook, on the hot path of every
//! pod); workload-level overrides belong on the pod template.

pub mod admission;
pub mod metrics;
pub mod mutate;
pub mod namespaces;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;

pub use admission::AdmissionState;

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
pub async fn serve(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    router: Router,
    handle: Handle<std::net::SocketAddr>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    axum_server::from_tcp_rustls(listener, tls)?
        .handle(handle)
        .serve(router.into_make_service())
        .await
}
