//! TLS serving with certificate reload and no restart.
//!
//! [`ReloadingCert`] is a rustls [`ResolvesServerCert`] that hands every new handshake
//! the current certificate, kept in an [`ArcSwap`]. [`ReloadingCert::watch`] reloads it
//! when the PEM files change: it watches the files' *directories* (Kubernetes updates
//! Secret volumes by swapping a `..data` symlink, so the files themselves never see a
//! write event) and re-checks on an interval as a safety net. A new certificate that
//! does not load (half-written file, key/cert mismatch) is rejected: the last good one
//! keeps serving and the failure is logged and counted. Existing connections keep the
//! session they negotiated; only new handshakes see the new certificate.
//!
//! [`ReloadingCert::register_metrics`] exports the reloads, the failed reloads and the
//! expiry of the certificate being served, so a rotation that keeps failing is seen
//! before the old certificate expires.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate / key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not an X.509 certificate: {reason}")]
    X509 { path: PathBuf, reason: String },
    #[error("{path}: invalid PEM: {source}")]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate {cert} / key {key}: {source}")]
    Key {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// A serving certificate that can be swapped under running servers.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<Loaded>,
    reloads: Counter,
    failures: Counter,
    /// notAfter of the served end-entity certificate, unix seconds.
    expiry: Gauge,
}

struct Loaded {
    /// The PEM bytes it came from, to skip reloads that change nothing.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Reads a PEM certificate chain and private key, checking that they belong together.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    parse_certified_key(cert_path, &cert_pem, key_path, &key_pem)
}

/// The end-entity certificate's notAfter, unix seconds.
pub fn expiry_unix_seconds(cert_path: &Path, key: &CertifiedKey) -> Result<i64, TlsError> {
    let invalid = |reason: String| TlsError::X509 {
        path: cert_path.to_path_buf(),
        reason,
    };
    let der = key.end_entity_cert().map_err(|e| invalid(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert_path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
        path: key_path.to_path_buf(),
        source,
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Key {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    })
}

impl ReloadingCert {
    /// Loads the initial certificate; fails when it does not load (a server must not
    /// start without one).
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let key = parse_certified_key(&cert_path, &cert_pem, &key_path, &key_pem)?;
        let expiry = Gauge::default();
        expiry.set(expiry_unix_seconds(&cert_path, &key)?);
        Ok(Arc::new(ReloadingCert {
            cert_path,
            key_path,
            current: ArcSwap::from_pointee(Loaded {
                cert_pem,
                key_pem,
                key: Arc::new(key),
            }),
            reloads: Counter::default(),
            failures: Counter::default(),
            expiry,
        }))
    }

    /// Registers, in `registry` (give it the program's prefix):
    /// `tls_certificate_reloads_total`, `tls_certificate_reload_failures_total` and
    /// `tls_certificate_expiry_seconds` (notAfter of the certificate being served).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "tls_certificate_reloads",
            "New serving certificates swapped in after a change on disk",
            self.reloads.clone(),
        );
        registry.register(
            "tls_certificate_reload_failures",
            "Serving certificate reloads that failed (the last good certificate kept serving)",
            self.failures.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "Expiry (notAfter) of the serving certificate being served, unix seconds",
            self.expiry.clone(),
        );
    }

    /// Re-reads the files. `Ok(true)` when a new certificate is now served, `Ok(false)`
    /// when nothing changed; on error the previous certificate stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let result = (|| {
            let cert_pem = read(&self.cert_path)?;
            let key_pem = read(&self.key_path)?;
            let old = self.current.load();
            if old.cert_pem == cert_pem && old.key_pem == key_pem {
                return Ok(false);
            }
            let key = parse_certified_key(&self.cert_path, &cert_pem, &self.key_path, &key_pem)?;
            let expiry = expiry_unix_seconds(&self.cert_path, &key)?;
            self.current.store(Arc::new(Loaded {
                cert_pem,
                key_pem,
                key: Arc::new(key),
            }));
            self.expiry.set(expiry);
            Ok(true)
        })();
        match &result {
            Ok(true) => {
                self.reloads.inc();
                tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
            }
            Ok(false) => {}
            Err(e) => {
                self.failures.inc();
                tracing::warn!(error = %e, "serving certificate not reloaded; keeping the last good one");
            }
        }
        result
    }

    /// The certificate chain currently served (end-entity first).
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().key.cert.clone()
    }

    /// How many times a new certificate was swapped in.
    pub fn reload_count(&self) -> u64 {
        self.reloads.get()
    }

    /// How many reloads failed (the last good certificate kept serving).
    pub fn failure_count(&self) -> u64 {
        self.failures.get()
    }

    /// notAfter of the certificate being served, unix seconds.
    pub fn expiry(&self) -> i64 {
        self.expiry.get()
    }

    /// A rustls server config (TLS 1.2 and 1.3, ALPN h2 + http/1.1) that resolves its
    /// certificate through `self` on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ])
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The same config for `axum_server::bind_rustls`.
    pub fn axum_config(self: &Arc<Self>) -> axum_server::tls_rustls::RustlsConfig {
        axum_server::tls_rustls::RustlsConfig::from_config(self.server_config())
    }

    /// Reloads whenever something changes in the directories of the cert and key files,
    /// and every `recheck` regardless (events can be missed, e.g. on some overlay
    /// filesystems). Must be called inside a Tokio runtime; stops when the returned
    /// guard is dropped.
    pub fn watch(self: &Arc<Self>, recheck: Duration) -> Result<WatchGuard, TlsError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    // A full channel already means "reload soon".
                    let _ = tx.try_send(());
                }
            })
            .map_err(|source| TlsError::Watch {
                path: self.cert_path.clone(),
                source,
            })?;
        let mut dirs: Vec<PathBuf> = [&self.cert_path, &self.key_path]
            .iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.dedup();
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| TlsError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(recheck);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    changed = rx.recv() => {
                        if changed.is_none() { break; }
                        // Let a writer finish both files (cert-manager writes them one by one).
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = tick.tick() => {}
                }
                let _ = this.reload();
            }
        });
        Ok(WatchGuard {
            _watcher: watcher,
            task,
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// Keeps a [`ReloadingCert::watch`] running; dropping it stops the watch.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let c = dir.join("tls.crt");
        let k = dir.join("tls.key");
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn invalid_reload_keeps_the_last_good_certificate() {
        crate::telemetry::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a.test");
        let reloading = ReloadingCert::load(&c, &k).unwrap();
        let first = reloading.current_chain();
        assert!(
            !reloading.reload().unwrap(),
            "unchanged files are not a reload"
        );

        // A key that does not match the certificate.
        let other = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        std::fs::write(&k, other.signing_key.serialize_pem()).unwrap();
        assert!(matches!(reloading.reload(), Err(TlsError::Key { .. })));
        std::fs::write(&c, "not pem").unwrap();
        assert!(reloading.reload().is_err());
        assert_eq!(reloading.current_chain(), first);
        assert_eq!(reloading.failure_count(), 2);

        write_pair(dir.path(), "c.test");
        assert!(reloading.reload().unwrap());
        assert_ne!(reloading.current_chain(), first);
        assert_eq!(reloading.reload_count(), 1);
    }

    /// A self-signed pair for `name` that expires at midnight UTC on `expires`.
    fn write_expiring(dir: &Path, name: &str, expires: (i32, u8, u8)) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(expires.0, expires.1, expires.2);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn metrics_show_failed_reloads_and_the_expiry_of_the_served_certificate() {
        crate::telemetry::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        write_expiring(dir.path(), "a.test", (2031, 5, 6));
        let reloading =
            ReloadingCert::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
        let mut registry = Registry::default();
        reloading.register_metrics(registry.sub_registry_with_prefix("spotkube_test"));
        // 2031-05-06T00:00:00Z
        assert_eq!(reloading.expiry(), 1_935_792_000);
        let text = scrape(&registry);
        assert!(
            text.contains("spotkube_test_tls_certificate_expiry_seconds 1935792000"),
            "{text}"
        );
        assert!(
            text.contains("spotkube_test_tls_certificate_reload_failures_total 0"),
            "{text}"
        );

        // A broken rotation: counted, and the expiry stays the served certificate's.
        std::fs::write(dir.path().join("tls.crt"), "not pem").unwrap();
        assert!(reloading.reload().is_err());
        let text = scrape(&registry);
        assert!(
            text.contains("spotkube_test_tls_certificate_reload_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains("spotkube_test_tls_certificate_expiry_seconds 1935792000"),
            "{text}"
        );

        write_expiring(dir.path(), "b.test", (2032, 1, 2));
        assert!(reloading.reload().unwrap());
        let text = scrape(&registry);
        // 2032-01-02T00:00:00Z
        assert!(
            text.contains("spotkube_test_tls_certificate_expiry_seconds 1956614400"),
            "{text}"
        );
        assert!(
            text.contains("spotkube_test_tls_certificate_reloads_total 1"),
            "{text}"
        );
        assert!(
            text.contains("spotkube_test_tls_certificate_reload_failures_total 1"),
            "{text}"
        );
    }

    #[test]
    fn a_server_cannot_start_without_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            ReloadingCert::load(dir.path().join("no.crt"), dir.path().join("no.key")).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }));
        std::fs::write(dir.path().join("empty.crt"), "").unwrap();
        std::fs::write(dir.path().join("empty.key"), "").unwrap();
        let err = ReloadingCert::load(dir.path().join("empty.crt"), dir.path().join("empty.key"))
            .unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }));
    }
}
