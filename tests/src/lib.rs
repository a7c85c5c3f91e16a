//! spotkube's test rig: a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) with kwok-simulated Nodes, spotkube's own
//! programs as local processes, and moto for AWS — all on 127.0.0.1, driven from
//! `cargo test`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), spotkube_rig::RigError> {
//! use spotkube_rig::{Cluster, FakeNode};
//! let cluster = Cluster::shared().await?;          // one control plane per test binary
//! let test = cluster.namespace("my-test").await?;  // a fresh namespace (+ log dump on panic)
//! FakeNode::spot("m7g.large", "us-east-1a").create(&test.client).await?;
//! # Ok(()) }
//! ```
//!
//! Every process the rig starts is stopped when its handle drops, at process exit, and by
//! the kernel if the test binary is killed (see [`process`]).

pub mod autoscaling;
pub mod aws;
pub mod bench;
pub mod certs;
pub mod cluster;
pub mod control_plane;
pub mod fargate;
pub mod faults;
pub mod identity;
pub mod kwok;
pub mod nodes;
pub mod ports;
pub mod process;
pub mod programs;
pub mod registrar;
pub mod shipped;
pub mod tools;
pub mod wait;
pub mod workloads;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cluster::{Cluster, TestNamespace};
pub use control_plane::{ControlPlane, ExtenderConfig};
pub use nodes::{Capacity, FakeNode, NodeKind, ZONES};
pub use programs::Program;
pub use registrar::{Registrar, RegistrarOptions};
pub use wait::{
    EndpointWatch, ready_endpoints, wait_for, wait_for_ready_endpoints, wait_for_rollout,
    wait_for_schedulable_nodes,
};

/// Everything that can go wrong while setting up or driving the rig.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("tool not found: {0} (run tests/tools/install-tools.sh)")]
    MissingTool(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {name}: {reason}")]
    Spawn { name: String, reason: String },
    #[error("{name} exited ({status}); log: {}", log.display())]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
    },
    #[error("{name} not ready: {last}; log: {}", log.display())]
    NotReady {
        name: String,
        last: String,
        log: PathBuf,
    },
    #[error("timed out after {after:?} waiting for {what}: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("certificates: {0}")]
    Certs(String),
    #[error("http: {0}")]
    Http(String),
    #[error("kubernetes: {0}")]
    Kube(String),
    #[error("aws: {0}")]
    Aws(String),
    #[error("price snapshot: {0}")]
    Snapshot(String),
}

impl RigError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Installs the process-wide rustls provider and test logging once (idempotent).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        spotkube_shared::telemetry::install_crypto_provider();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("spotkube_rig=info")),
            )
            .with_test_writer()
            .try_init();
    });
}
