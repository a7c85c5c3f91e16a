//! Where the external tools live: the directories `tests/tools/install-tools.sh` prints,
//! overridable with the same `SPOTKUBE_*` environment variables.

use std::path::{Path, PathBuf};

use crate::RigError;

/// Paths of every external program the rig runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub etcd: PathBuf,
    pub kwok: PathBuf,
    /// The moto venv's python.
    pub python: PathBuf,
    /// `tests/tools/moto_server.py`.
    pub moto_server: PathBuf,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("SPOTKUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/spotkube")
        })
}

fn dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(default))
}

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

impl Tools {
    /// Locates the tools and checks that the Kubernetes ones exist (moto is checked when started).
    pub fn locate() -> Result<Self, RigError> {
        let k8s = dir("SPOTKUBE_K8S_BIN", "k8s-v1.36.3");
        let tools = Self {
            kube_apiserver: k8s.join("kube-apiserver"),
            kube_controller_manager: k8s.join("kube-controller-manager"),
            kube_scheduler: k8s.join("kube-scheduler"),
            etcd: dir("SPOTKUBE_ETCD_BIN", "etcd-v3.6.16").join("etcd"),
            kwok: dir("SPOTKUBE_KWOK_BIN", "kwok-v0.8.0").join("kwok"),
            python: dir("SPOTKUBE_MOTO_VENV", "moto-5.2.1").join("bin/python"),
            moto_server: workspace_root().join("tests/tools/moto_server.py"),
        };
        for path in [
            &tools.kube_apiserver,
            &tools.kube_controller_manager,
            &tools.kube_scheduler,
            &tools.etcd,
            &tools.kwok,
        ] {
            if !path.exists() {
                return Err(RigError::MissingTool(path.clone()));
            }
        }
        Ok(tools)
    }
}

/// The helm binary `install-tools.sh helm` builds.
pub fn helm() -> PathBuf {
    dir("SPOTKUBE_HELM_BIN", "helm-v3.22.0").join("helm")
}

/// The directory of the CRDs `install-tools.sh crds` fetches (cert-manager's Issuer and
/// Certificate, the Prometheus Operator's ServiceMonitor).
pub fn crds_dir() -> PathBuf {
    dir(
        "SPOTKUBE_CRDS",
        "crds-cert-manager-v1.21.2-prometheus-operator-v0.85.0",
    )
}

/// `$CARGO_TARGET_DIR/<profile>/<name>` (default `<workspace>/target/debug/<name>`).
/// The profile is `$SPOTKUBE_PROGRAMS_PROFILE` (`debug` unless set; benchmarks set
/// `release` after `cargo build --release --workspace --bins`).
pub fn program_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join(programs_profile()).join(name)
}

/// The cargo profile directory spotkube's programs are run from:
/// `$SPOTKUBE_PROGRAMS_PROFILE`, default `debug`.
pub fn programs_profile() -> String {
    std::env::var("SPOTKUBE_PROGRAMS_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "debug".into())
}
