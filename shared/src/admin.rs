//! The admin endpoints every spotkube program serves on a plain-HTTP port apart from
//! its API: `/healthz` (the process answers), `/readyz` (every readiness gate is
//! open, e.g. caches synced) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Named conditions that must all hold before the process reports ready.
/// Cloning shares the gates.
#[derive(Clone, Default)]
pub struct Readiness {
    gates: Arc<Mutex<Vec<NamedGate>>>,
    advisories: Arc<Mutex<Vec<Advisory>>>,
}

/// A condition `/readyz` reports (in its body) without gating on it: the process works
/// on, degraded, and restarting it or taking it out of a Service would not help (e.g. the
/// controller's SQS queue unreachable or throttling).
struct Advisory {
    name: String,
    degraded: Box<dyn Fn() -> bool + Send + Sync>,
}

struct NamedGate {
    name: String,
    gate: Gate,
}

/// One readiness condition; open it once the thing it guards is ready.
#[derive(Clone)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    pub fn open(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn close(&self) {
        self.0.store(false, Ordering::Release);
    }
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Readiness {
    /// Adds a closed gate named `name` (shown by `/readyz` while it is closed).
    pub fn gate(&self, name: &str) -> Gate {
        let gate = Gate(Arc::new(AtomicBool::new(false)));
        self.gates.lock().expect("readiness lock").push(NamedGate {
            name: name.to_string(),
            gate: gate.clone(),
        });
        gate
    }

    /// Adds a condition `/readyz` reports while `degraded()` holds, answering 200
    /// `ok (degraded: <name>, ...)` rather than failing.
    pub fn advisory(&self, name: &str, degraded: impl Fn() -> bool + Send + Sync + 'static) {
        self.advisories
            .lock()
            .expect("readiness lock")
            .push(Advisory {
                name: name.to_string(),
                degraded: Box::new(degraded),
            });
    }

    /// The names of the advisory conditions that hold now.
    pub fn degraded(&self) -> Vec<String> {
        self.advisories
            .lock()
            .expect("readiness lock")
            .iter()
            .filter(|a| (a.degraded)())
            .map(|a| a.name.clone())
            .collect()
    }

    /// The names of the gates still closed; empty means ready.
    pub fn waiting_for(&self) -> Vec<String> {
        self.gates
            .lock()
            .expect("readiness lock")
            .iter()
            .filter(|g| !g.gate.is_open())
            .map(|g| g.name.clone())
            .collect()
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let waiting = state.readiness.waiting_for();
    let degraded = state.readiness.degraded();
    if waiting.is_empty() && degraded.is_empty() {
        (StatusCode::OK, "ok".to_string())
    } else if waiting.is_empty() {
        (
            StatusCode::OK,
            format!("ok (degraded: {})", degraded.join(", ")),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for: {}", waiting.join(", ")),
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves the admin router on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoints listening (/healthz /readyz /metrics)");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_gate_is_open() {
        let readiness = Readiness::default();
        let cache = readiness.gate("namespace cache");
        let tls = readiness.gate("tls");
        assert_eq!(readiness.waiting_for(), vec!["namespace cache", "tls"]);
        cache.open();
        assert_eq!(readiness.waiting_for(), vec!["tls"]);
        tls.open();
        assert!(readiness.waiting_for().is_empty());
        cache.close();
        assert_eq!(readiness.waiting_for(), vec!["namespace cache"]);
    }

    #[tokio::test]
    async fn an_advisory_condition_is_reported_but_does_not_gate() {
        let readiness = Readiness::default();
        let failing = Arc::new(AtomicBool::new(false));
        let flag = failing.clone();
        readiness.advisory("sqs receive", move || flag.load(Ordering::Relaxed));
        let state = || AdminState {
            registry: Arc::new(Registry::default()),
            readiness: readiness.clone(),
        };
        let body = |r: axum::response::Response| async move {
            let status = r.status();
            let bytes = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        };
        let ok = body(readyz(State(state())).await.into_response()).await;
        assert_eq!(ok, (StatusCode::OK, "ok".to_string()));
        failing.store(true, Ordering::Relaxed);
        assert_eq!(readiness.degraded(), vec!["sqs receive"]);
        let degraded = body(readyz(State(state())).await.into_response()).await;
        assert_eq!(
            degraded,
            (StatusCode::OK, "ok (degraded: sqs receive)".to_string())
        );
        let gate = readiness.gate("nodes index");
        let waiting = body(readyz(State(state())).await.into_response()).await;
        assert_eq!(waiting.0, StatusCode::SERVICE_UNAVAILABLE);
        gate.open();
        failing.store(false, Ordering::Relaxed);
        assert!(readiness.degraded().is_empty());
    }
}
