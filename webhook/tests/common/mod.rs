//! Starts the real webhook over TLS on 127.0.0.1 for component tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::ObjectMeta;
use prometheus_client::registry::Registry;
use spotkube_shared::policy::Policy;
use spotkube_shared::tls::ReloadingCert;
use spotkube_webhook::AdmissionState;
use spotkube_webhook::metrics::Metrics;
use spotkube_webhook::mutate::MutationConfig;
use spotkube_webhook::namespaces::NamespaceCache;

/// The captured Pod CREATE, from the repository's `testdata/` (`SPOTKUBE_TESTDATA_DIR`
/// overrides where that is).
pub fn fixture() -> PathBuf {
    let testdata = std::env::var_os("SPOTKUBE_TESTDATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata"));
    testdata.join("fixtures/admission/pod-create-from-deployment.json")
}

/// A development CA that signs serving certificates for 127.0.0.1.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "spotkube test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a fresh serving cert + key for 127.0.0.1 into `dir`; returns the cert DER.
    pub fn write_serving(&self, dir: &Path, cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }
}

pub fn namespace(name: &str, annotations: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub handle: axum_server::Handle<SocketAddr>,
    pub cert: Arc<ReloadingCert>,
    pub ca: Ca,
    pub registry: Arc<Registry>,
    pub cert_dir: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Options {
    pub namespaces: Vec<Namespace>,
    pub config: MutationConfig,
    pub max_body_bytes: usize,
    /// Serve the cert from a Kubernetes-style `..data` symlinked directory.
    pub symlinked: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespaces: vec![namespace("demo", &[("spotkube.io/enabled", "true")])],
            config: MutationConfig {
                tolerations: vec![
                    spotkube_webhook::mutate::parse_toleration("spot=true:NoSchedule").unwrap(),
                ],
                scheduler_name: Some("spotkube-scheduler".into()),
                ..MutationConfig::default()
            },
            max_body_bytes: spotkube_webhook::DEFAULT_MAX_BODY_BYTES,
            symlinked: false,
        }
    }
}

/// Writes a serving cert as Kubernetes does for Secret volumes: files in a timestamped
/// directory, `..data` pointing at it, `tls.crt` / `tls.key` pointing through `..data`.
pub fn write_symlinked(ca: &Ca, dir: &Path, generation: u32) -> Vec<u8> {
    let real = dir.join(format!("..2026_11_22_{generation}"));
    let der = ca.write_serving(&real, &format!("generation {generation}"));
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(real.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
    der
}

pub async fn start(options: Options) -> Server {
    spotkube_shared::telemetry::install_crypto_provider();
    spotkube_shared::telemetry::init_logging(spotkube_shared::telemetry::LogFormat::Text);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let cert_dir = dir.path().join("certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    if options.symlinked {
        write_symlinked(&ca, &cert_dir, 1);
    } else {
        ca.write_serving(&cert_dir, "webhook");
    }
    let cert = ReloadingCert::load(cert_dir.join("tls.crt"), cert_dir.join("tls.key")).unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let state = Arc::new(AdmissionState {
        config: options.config,
        defaults: Policy::default(),
        namespaces: NamespaceCache::fixed(options.namespaces),
        metrics,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = axum_server::Handle::new();
    tokio::spawn(spotkube_webhook::serve(
        listener,
        cert.axum_config(),
        spotkube_webhook::router(state, options.max_body_bytes),
        handle.clone(),
    ));
    Server {
        addr,
        handle,
        cert,
        ca,
        registry: Arc::new(registry),
        cert_dir,
        _dir: dir,
    }
}

impl Server {
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap())
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.addr.port())
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }
}
