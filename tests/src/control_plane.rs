//! A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, with generated certificates and free ports.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::RigError;
use crate::certs::{self, Authority, CertFiles};
use crate::ports::free_port;
use crate::process::{Managed, Spec};
use crate::tools::Tools;

/// How long a component may take to become ready before the rig gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// One extender entry of a KubeSchedulerConfiguration (field names as kube-scheduler reads them).
#[derive(Debug, Clone)]
pub struct ExtenderConfig {
    /// e.g. `http://127.0.0.1:8888` (no trailing slash).
    pub url_prefix: String,
    pub filter_verb: Option<String>,
    pub prioritize_verb: Option<String>,
    pub weight: i64,
    pub node_cache_capable: bool,
    /// When true, an unreachable or failing extender is skipped instead of failing scheduling.
    pub ignorable: bool,
    pub http_timeout: Duration,
    /// PEM CA bundle when the extender serves HTTPS.
    pub ca_file: Option<PathBuf>,
}

impl ExtenderConfig {
    /// The extender entry of the shipped scheduler configuration (the rendered chart's
    /// `manifests/scheduler/configmap.yaml`: verbs, weight, node cache, ignorable,
    /// timeout), calling `url_prefix` over plain HTTP instead of the in-cluster Service.
    pub fn shipped(url_prefix: impl Into<String>) -> Self {
        Self::from_shipped(url_prefix.into()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn from_shipped(url_prefix: String) -> Result<Self, RigError> {
        const FILE: &str = "scheduler/configmap.yaml";
        let invalid = |what: &str| RigError::Kube(format!("{FILE}: {what}"));
        let documents = crate::shipped::documents(FILE)?;
        let config = documents
            .first()
            .and_then(|d| d.data["data"]["config.yaml"].as_str())
            .ok_or_else(|| invalid("no data.config.yaml"))?;
        let config: serde_json::Value =
            serde_yaml_ng::from_str(config).map_err(|e| invalid(&e.to_string()))?;
        let entry = &config["extenders"][0];
        let verb = |key: &str| entry[key].as_str().map(String::from);
        let http_timeout = entry["httpTimeout"].as_str().unwrap_or("30s");
        Ok(Self {
            url_prefix,
            filter_verb: verb("filterVerb"),
            prioritize_verb: verb("prioritizeVerb"),
            weight: entry["weight"]
                .as_i64()
                .ok_or_else(|| invalid("no extender weight"))?,
            node_cache_capable: entry["nodeCacheCapable"].as_bool().unwrap_or(false),
            ignorable: entry["ignorable"].as_bool().unwrap_or(false),
            http_timeout: humantime::parse_duration(http_timeout)
                .map_err(|e| invalid(&format!("httpTimeout {http_timeout}: {e}")))?,
            ca_file: None,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "urlPrefix": self.url_prefix,
            "weight": self.weight,
            "nodeCacheCapable": self.node_cache_capable,
            "ignorable": self.ignorable,
            "httpTimeout": format!("{}ms", self.http_timeout.as_millis()),
        });
        if let Some(verb) = &self.filter_verb {
            v["filterVerb"] = json!(verb);
        }
        if let Some(verb) = &self.prioritize_verb {
            v["prioritizeVerb"] = json!(verb);
        }
        if let Some(ca) = &self.ca_file {
            v["enableHTTPS"] = json!(true);
            v["tlsConfig"] = json!({ "caFile": ca });
        }
        v
    }
}

/// The certificates of one control plane.
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Authority,
    pub front_proxy_ca: Authority,
    pub apiserver: CertFiles,
    pub front_proxy_client: CertFiles,
    pub admin: CertFiles,
    pub controller_manager: CertFiles,
    pub scheduler: CertFiles,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Result<Self, RigError> {
        let ca = Authority::new(dir, "ca")?;
        let front_proxy_ca = Authority::new(dir, "front-proxy-ca")?;
        let apiserver = ca.server(
            dir,
            "apiserver",
            &[
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let front_proxy_client =
            front_proxy_ca.client(dir, "front-proxy-client", "front-proxy-client", &[])?;
        let admin = ca.client(dir, "admin", "spotkube-rig-admin", &["system:masters"])?;
        let controller_manager = ca.client(
            dir,
            "controller-manager",
            "system:kube-controller-manager",
            &[],
        )?;
        let scheduler = ca.client(dir, "scheduler", "system:kube-scheduler", &[])?;
        let (service_account_key, service_account_pub) = certs::key_pair(dir, "service-account")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
            front_proxy_ca,
            apiserver,
            front_proxy_client,
            admin,
            controller_manager,
            scheduler,
            service_account_key,
            service_account_pub,
        })
    }
}

/// Writes a kubeconfig (JSON is valid YAML) for a client certificate.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    client: &CertFiles,
) -> Result<(), RigError> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "spotkube-rig", "cluster": { "server": server, "certificate-authority": ca } }],
        "users": [{ "name": "user", "user": { "client-certificate": client.cert, "client-key": client.key } }],
        "contexts": [{ "name": "spotkube-rig", "context": { "cluster": "spotkube-rig", "user": "user" } }],
        "current-context": "spotkube-rig",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config).expect("json"))
        .map_err(|e| RigError::io(path, e))
}

/// A running control plane. Dropping it stops every process.
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub log_dir: PathBuf,
    pub tools: Tools,
    pub pki: Pki,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Admin kubeconfig (user in `system:masters`).
    pub kubeconfig: PathBuf,
    /// How long the start took (etcd to all components ready).
    pub startup: Duration,
    processes: Mutex<Vec<Managed>>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler under `dir`.
    pub async fn start(dir: &Path, tools: Tools) -> Result<Self, RigError> {
        let started = Instant::now();
        let log_dir = dir.join("logs");
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(|e| RigError::io(&pki_dir, e))?;
        let pki = Pki::generate(&pki_dir)?;

        let etcd_port = free_port();
        let etcd_peer = free_port();
        let etcd = Managed::spawn(
            Spec::new("etcd", &tools.etcd).args([
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--listen-metrics-urls=".into(),
                // Test data is disposable: skip fsync, the slowest part of etcd on CI disks.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ]),
            &log_dir,
        )?;
        let mut plane = Self {
            dir: dir.to_path_buf(),
            log_dir: log_dir.clone(),
            tools,
            pki,
            server: String::new(),
            kubeconfig: dir.join("admin.kubeconfig"),
            startup: Duration::ZERO,
            processes: Mutex::new(vec![etcd]),
        };

        let api_port = free_port();
        plane.server = format!("https://127.0.0.1:{api_port}");
        let p = &plane.pki;
        let apiserver = Managed::spawn(
            Spec::new("kube-apiserver", &plane.tools.kube_apiserver).args([
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--advertise-address=127.0.0.1".into(),
                // The default reconciler wants a routable advertise address.
                "--endpoint-reconciler-type=none".into(),
                format!("--cert-dir={}", p.dir.display()),
                format!("--tls-cert-file={}", p.apiserver.cert.display()),
                format!("--tls-private-key-file={}", p.apiserver.key.display()),
                format!("--client-ca-file={}", p.ca.files.cert.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!(
                    "--service-account-key-file={}",
                    p.service_account_pub.display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    p.service_account_key.display()
                ),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                // Without the aggregation-layer flags controller-manager and scheduler
                // complain about a missing CA bundle forever.
                format!(
                    "--requestheader-client-ca-file={}",
                    p.front_proxy_ca.files.cert.display()
                ),
                "--requestheader-allowed-names=front-proxy-client".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-username-headers=X-Remote-User".into(),
                format!(
                    "--proxy-client-cert-file={}",
                    p.front_proxy_client.cert.display()
                ),
                format!(
                    "--proxy-client-key-file={}",
                    p.front_proxy_client.key.display()
                ),
            ]),
            &log_dir,
        )?;
        plane.push(apiserver);
        write_kubeconfig(
            &plane.kubeconfig,
            &plane.server,
            &plane.pki.ca.files.cert,
            &plane.pki.admin,
        )?;
        plane
            .wait_ready("kube-apiserver", &format!("{}/readyz", plane.server), true)
            .await?;

        let cm_kubeconfig = dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &cm_kubeconfig,
            &plane.server,
            &plane.pki.ca.files.cert,
            &plane.pki.controller_manager,
        )?;
        let cm_port = free_port();
        let cm = Managed::spawn(
            Spec::new(
                "kube-controller-manager",
                &plane.tools.kube_controller_manager,
            )
            .args([
                format!("--kubeconfig={}", cm_kubeconfig.display()),
                format!("--authentication-kubeconfig={}", cm_kubeconfig.display()),
                format!("--authorization-kubeconfig={}", cm_kubeconfig.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={cm_port}"),
                format!(
                    "--cert-dir={}",
                    plane.pki.dir.join("controller-manager").display()
                ),
                "--leader-elect=false".into(),
                // Each controller acts as its own service account with the bootstrap roles.
                "--use-service-account-credentials=true".into(),
                format!(
                    "--service-account-private-key-file={}",
                    plane.pki.service_account_key.display()
                ),
                format!("--root-ca-file={}", plane.pki.ca.files.cert.display()),
                format!(
                    "--cluster-signing-cert-file={}",
                    plane.pki.ca.files.cert.display()
                ),
                format!(
                    "--cluster-signing-key-file={}",
                    plane.pki.ca.files.key.display()
                ),
                "--profiling=false".into(),
            ]),
            &log_dir,
        )?;
        plane.push(cm);

        let scheduler = plane.spawn_scheduler("kube-scheduler", "default-scheduler", &[], None)?;
        let scheduler_port = scheduler.1;
        plane.push(scheduler.0);

        plane
            .wait_ready(
                "kube-controller-manager",
                &format!("https://127.0.0.1:{cm_port}/healthz"),
                false,
            )
            .await?;
        plane
            .wait_ready(
                "kube-scheduler",
                &format!("https://127.0.0.1:{scheduler_port}/healthz"),
                false,
            )
            .await?;
        plane.startup = started.elapsed();
        tracing::info!(server = %plane.server, startup = ?plane.startup, dir = %plane.dir.display(), "control plane ready");
        Ok(plane)
    }

    fn push(&self, process: Managed) {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(process);
    }

    /// Starts a kube-scheduler with one profile `scheduler_name` calling `extenders`;
    /// `client_qps` sets its API client's QPS and burst (default: kube-scheduler's own,
    /// 50 / 100). Returns the process and its secure (healthz) port.
    fn spawn_scheduler(
        &self,
        process_name: &str,
        scheduler_name: &str,
        extenders: &[ExtenderConfig],
        client_qps: Option<u32>,
    ) -> Result<(Managed, u16), RigError> {
        let kubeconfig = self.dir.join("scheduler.kubeconfig");
        if !kubeconfig.exists() {
            write_kubeconfig(
                &kubeconfig,
                &self.server,
                &self.pki.ca.files.cert,
                &self.pki.scheduler,
            )?;
        }
        let mut client_connection = json!({ "kubeconfig": kubeconfig });
        if let Some(qps) = client_qps {
            client_connection["qps"] = json!(qps);
            client_connection["burst"] = json!(qps);
        }
        let config = json!({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": client_connection,
            // One instance per profile: no lease needed, and no waiting for one.
            "leaderElection": { "leaderElect": false },
            "profiles": [{ "schedulerName": scheduler_name }],
            "extenders": extenders.iter().map(ExtenderConfig::to_json).collect::<Vec<_>>(),
        });
        let config_path = self.dir.join(format!("{process_name}.config.json"));
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .map_err(|e| RigError::io(&config_path, e))?;
        let port = free_port();
        let process = Managed::spawn(
            Spec::new(process_name, &self.tools.kube_scheduler).args([
                format!("--config={}", config_path.display()),
                format!("--authentication-kubeconfig={}", kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kubeconfig.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", self.pki.dir.join(process_name).display()),
                // /metrics without a SubjectAccessReview: right after the start the
                // client CA is not loaded yet, and benchmarks scrape from the first
                // moment (loopback only).
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics".into(),
            ]),
            &self.log_dir,
        )?;
        Ok((process, port))
    }

    /// Starts an additional kube-scheduler whose only profile is `scheduler_name` and which
    /// calls `extenders` — the way spotkube ships a second scheduler next to EKS's. Pods
    /// choose it with `spec.schedulerName`. Stopped when the returned handle drops.
    pub async fn start_scheduler(
        &self,
        scheduler_name: &str,
        extenders: &[ExtenderConfig],
    ) -> Result<Managed, RigError> {
        Ok(self
            .start_scheduler_with_port(scheduler_name, extenders, None)
            .await?
            .0)
    }

    /// [`ControlPlane::start_scheduler`], also returning the scheduler's secure port
    /// (its `/metrics`, read with [`ControlPlane::component_metrics`]). `client_qps`
    /// raises the API client's QPS and burst (kube-scheduler's default of 50 caps
    /// binding at about 50 pods/s, which a throughput benchmark must not measure).
    pub async fn start_scheduler_with_port(
        &self,
        scheduler_name: &str,
        extenders: &[ExtenderConfig],
        client_qps: Option<u32>,
    ) -> Result<(Managed, u16), RigError> {
        let (process, port) = self.spawn_scheduler(
            &format!("kube-scheduler-{scheduler_name}"),
            scheduler_name,
            extenders,
            client_qps,
        )?;
        self.wait_ready(
            process.name(),
            &format!("https://127.0.0.1:{port}/healthz"),
            false,
        )
        .await?;
        Ok((process, port))
    }

    /// An HTTPS client presenting the admin certificate (`system:masters`), which the
    /// components' secure ports authenticate (client CA) and authorize (a
    /// SubjectAccessReview). Their self-signed serving certificates are not verified.
    pub fn admin_https_client(&self) -> Result<reqwest::Client, RigError> {
        let http_err = |e: reqwest::Error| RigError::Http(e.to_string());
        let admin = &self.pki.admin;
        let identity =
            reqwest::Identity::from_pem(format!("{}{}", admin.cert_pem, admin.key_pem).as_bytes())
                .map_err(http_err)?;
        reqwest::Client::builder()
            .use_rustls_tls()
            .danger_accept_invalid_certs(true)
            .identity(identity)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(http_err)
    }

    /// `/metrics` (Prometheus text) of a component's secure port on 127.0.0.1 (e.g. a
    /// scheduler of [`ControlPlane::start_scheduler_with_port`]), with `client` from
    /// [`ControlPlane::admin_https_client`].
    pub async fn component_metrics(
        &self,
        client: &reqwest::Client,
        port: u16,
    ) -> Result<String, RigError> {
        let http_err = |e: reqwest::Error| RigError::Http(e.to_string());
        client
            .get(format!("https://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .map_err(http_err)?
            .error_for_status()
            .map_err(http_err)?
            .text()
            .await
            .map_err(http_err)
    }

    /// Polls `url` until it answers 200. `verify` checks the cluster CA; components'
    /// self-signed healthz certificates are accepted without verification.
    pub async fn wait_ready(&self, name: &str, url: &str, verify: bool) -> Result<(), RigError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(2));
        if verify {
            let ca = reqwest::Certificate::from_pem(self.pki.ca.files.cert_pem.as_bytes())
                .map_err(|e| RigError::Certs(e.to_string()))?;
            builder = builder.add_root_certificate(ca);
        } else {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| RigError::Http(e.to_string()))?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(exit) = self.exited(name) {
                return Err(RigError::Exited {
                    name: name.into(),
                    status: exit,
                    log: self.log_dir.join(format!("{name}.log")),
                });
            }
            match http.get(url).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => last = format!("HTTP {}", resp.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(RigError::NotReady {
            name: name.into(),
            last,
            log: self.log_dir.join(format!("{name}.log")),
        })
    }

    fn exited(&self, name: &str) -> Option<String> {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        processes
            .iter_mut()
            .find(|p| p.name() == name)
            .and_then(Managed::exited)
    }

    /// Adopts a process so it lives (and dies) with the control plane.
    pub fn adopt(&self, process: Managed) {
        self.push(process);
    }

    /// Restarts kube-apiserver as it runs now (same etcd, port, certificates and flags,
    /// read back from its command line): SIGTERM (SIGKILL after 10 s), `down` without
    /// it, then the same command again; returns once it is ready. Every client sees
    /// the outage: use a private [`crate::Cluster::start`].
    pub async fn restart_apiserver(&self, down: Duration) -> Result<(), RigError> {
        let name = "kube-apiserver";
        let mut old = {
            let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
            let index = processes
                .iter()
                .position(|p| p.name() == name)
                .ok_or_else(|| RigError::Spawn {
                    name: name.into(),
                    reason: "not running".into(),
                })?;
            processes.remove(index)
        };
        let pid = old.pid().ok_or_else(|| RigError::Spawn {
            name: name.into(),
            reason: "already stopped".into(),
        })?;
        let cmdline_path = PathBuf::from(format!("/proc/{pid}/cmdline"));
        let cmdline = std::fs::read(&cmdline_path).map_err(|e| RigError::io(&cmdline_path, e))?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .skip(1)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        tokio::task::spawn_blocking(move || old.stop(Duration::from_secs(10)))
            .await
            .map_err(|e| RigError::Spawn {
                name: name.into(),
                reason: format!("stopping: {e}"),
            })?;
        tokio::time::sleep(down).await;
        let apiserver = Managed::spawn(
            Spec::new(name, &self.tools.kube_apiserver).args(args),
            &self.log_dir,
        )?;
        self.push(apiserver);
        self.wait_ready(name, &format!("{}/readyz", self.server), true)
            .await
    }

    /// Every log file of the control plane's processes.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// A kube client as the admin user. Create one per test (a client is bound to the
    /// tokio runtime it first runs on, and every `#[tokio::test]` has its own).
    pub async fn client(&self) -> Result<kube::Client, RigError> {
        client_from_kubeconfig(&self.kubeconfig).await
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, RigError> {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|e| RigError::Kube(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| RigError::Kube(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| RigError::Kube(e.to_string()))
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse start order: clients before the apiserver, the apiserver before etcd.
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut process) = processes.pop() {
            process.stop(Duration::from_secs(2));
        }
    }
}
