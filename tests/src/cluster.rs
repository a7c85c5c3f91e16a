//! The handle tests use: a control plane + kwok, shared by every test of a test binary,
//! and a fresh namespace per test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::OnceCell;

use crate::control_plane::ControlPlane;
use crate::process::tail;
use crate::tools::Tools;
use crate::{RigError, kwok, wait};

/// A running control plane with kwok. Derefs to [`ControlPlane`].
#[derive(Debug)]
pub struct Cluster {
    plane: ControlPlane,
    /// Keeps the rig's directory alive (certs, kubeconfigs, logs, etcd data).
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Cluster {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.plane
    }
}

impl Cluster {
    /// Starts a private cluster (most tests want [`Cluster::shared`]).
    pub async fn start() -> Result<Self, RigError> {
        crate::init();
        let tools = Tools::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("spotkube-rig-")
            .tempdir()
            .map_err(|e| RigError::io(&std::env::temp_dir(), e))?;
        let plane = ControlPlane::start(dir.path(), tools).await?;
        kwok::start(&plane, dir.path())?;
        let cluster = Self { plane, _dir: dir };
        // Usable means: the controller-manager has created the default ServiceAccount
        // (pods cannot be admitted without it).
        let client = cluster.client().await?;
        let sa: Api<ServiceAccount> = Api::namespaced(client, "default");
        wait::wait_for(
            "default ServiceAccount",
            Duration::from_secs(60),
            || async { Ok(sa.get_opt("default").await?.map(|_| ())) },
        )
        .await
        .map_err(|e| cluster.annotate(e))?;
        Ok(cluster)
    }

    /// The cluster every test of this test binary shares, started on first use. Its
    /// processes are stopped when the test binary exits.
    pub async fn shared() -> Result<&'static Cluster, RigError> {
        static SHARED: OnceCell<Cluster> = OnceCell::const_new();
        SHARED
            .get_or_try_init(|| async {
                let cluster = Cluster::start().await?;
                crate::process::remove_at_exit(cluster._dir.path().to_path_buf());
                Ok(cluster)
            })
            .await
    }

    /// A fresh namespace `<prefix>-<random>` with its own admin client. When the test
    /// panics, dropping the handle prints every component's log path and tail.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace, RigError> {
        self.namespace_with(prefix, &[]).await
    }

    /// Like [`Cluster::namespace`], with annotations on the Namespace (e.g. `spotkube.io/enabled`).
    ///
    /// A valid `spotkube.io/enabled` annotation also sets the label of the same key, which
    /// the webhook's `namespaceSelector` selects. In a cluster the controller's leader
    /// mirrors it; most tests run no controller, so the rig stands in for it here.
    pub async fn namespace_with(
        &self,
        prefix: &str,
        annotations: &[(&str, &str)],
    ) -> Result<TestNamespace, RigError> {
        let client = self.client().await?;
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: (!annotations.is_empty()).then(|| {
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                labels: opt_in_label(annotations),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| RigError::Kube(format!("create namespace {name}: {e}")))?;
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait::wait_for(
            &format!("default ServiceAccount in {name}"),
            Duration::from_secs(30),
            || async { Ok(sa.get_opt("default").await?.map(|_| ())) },
        )
        .await?;
        Ok(TestNamespace {
            name,
            client,
            log_files: self.log_dir.clone(),
        })
    }

    /// The kube-apiserver's own `/metrics` (Prometheus text), read as the admin user:
    /// e.g. `apiserver_admission_webhook_fail_open_count{name=...,type="admit"}`.
    pub async fn apiserver_metrics(&self) -> Result<String, RigError> {
        let http_err = |e: reqwest::Error| RigError::Http(e.to_string());
        let ca = reqwest::Certificate::from_pem(self.pki.ca.files.cert_pem.as_bytes())
            .map_err(http_err)?;
        let admin = &self.pki.admin;
        let identity =
            reqwest::Identity::from_pem(format!("{}{}", admin.cert_pem, admin.key_pem).as_bytes())
                .map_err(http_err)?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(ca)
            .identity(identity)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(http_err)?;
        let resp = http
            .get(format!("{}/metrics", self.server))
            .send()
            .await
            .map_err(http_err)?
            .error_for_status()
            .map_err(http_err)?;
        resp.text().await.map_err(http_err)
    }

    /// Appends the log directory to an error, so a failed start says where to look.
    pub fn annotate(&self, error: RigError) -> RigError {
        match error {
            RigError::Timeout { what, after, last } => RigError::Timeout {
                what,
                after,
                last: format!("{last}; logs in {}", self.log_dir.display()),
            },
            other => other,
        }
    }
}

/// The Namespace label the webhook configuration selects: the opt-in annotation's key.
pub const OPT_IN_LABEL: &str = spotkube_shared::annotations::ENABLED;

/// The label the controller would mirror from `annotations`: `spotkube.io/enabled` with
/// the annotation's value when it is `true` or `false`, none otherwise.
fn opt_in_label(annotations: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    let (_, value) = annotations.iter().find(|(k, _)| *k == OPT_IN_LABEL)?;
    let enabled = spotkube_shared::annotations::parse_enabled(value).ok()?;
    Some(BTreeMap::from([(
        OPT_IN_LABEL.to_string(),
        enabled.to_string(),
    )]))
}

/// A test's namespace and client. Prints the rig's logs if the test panics.
pub struct TestNamespace {
    pub name: String,
    pub client: kube::Client,
    log_files: PathBuf,
}

impl TestNamespace {
    /// Every component log of the rig (control plane, kwok, programs, moto).
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.log_files)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}

impl TestNamespace {
    /// Passes `result` through; on `Err` prints every component log (path + tail) and keeps
    /// the rig's files. Tests returning `Result` wrap their body with it, since an `Err`
    /// return does not panic and would otherwise leave no clue.
    pub fn report<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Err(e) = &result {
            crate::process::keep_files();
            report_logs(&format!("{} ({e:#})", self.name), &self.log_files());
        }
        result
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::process::keep_files();
            report_logs(&self.name, &self.log_files());
        }
    }
}

/// Prints the path and last lines of every log (to stderr, which cargo test shows on failure).
pub fn report_logs(context: &str, files: &[PathBuf]) {
    eprintln!("==== {context} failed; component logs:");
    for file in files {
        eprintln!("---- {} (last 15 lines)", file.display());
        eprintln!("{}", tail(file, 15));
    }
}
