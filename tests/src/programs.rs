//! spotkube's own programs (webhook, extender, controller) as local processes that the
//! real kube-apiserver and kube-scheduler call, with TLS from the cluster's CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::RigError;
use crate::certs::CertFiles;
use crate::cluster::Cluster;
use crate::ports::free_addr;
use crate::process::{Managed, Spec};
use crate::tools::program_binary;

/// The webhook's drain window after SIGTERM in tests (the shipped default is 10 s): short,
/// so a dropped [`Program`] exits within its stop grace.
pub const WEBHOOK_TEST_DRAIN: Duration = Duration::from_millis(300);

/// What the API server does when a webhook does not answer (`failurePolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The request fails: what the rig uses, so a broken webhook fails the test.
    Fail,
    /// The object is admitted unmutated: what spotkube ships.
    Ignore,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// A running spotkube program. Stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Program {
    pub process: Managed,
    /// The main listener (`--listen`), if the program has one.
    pub listen: Option<SocketAddr>,
    /// The plain-HTTP admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
    /// The serving certificate (signed by the cluster CA) when the program serves TLS.
    pub tls: Option<CertFiles>,
}

/// How to start a program.
#[derive(Debug, Clone, Default)]
pub struct ProgramOptions {
    /// Extra command-line arguments, appended after the rig's own.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Serve the main listener over TLS with a cluster-CA-signed certificate.
    pub tls: bool,
    /// Give the program a `--listen` address.
    pub listen: bool,
    /// Return as soon as the process runs instead of waiting for `/readyz` (e.g. a standby
    /// controller replica that is only ready once it leads); call [`Program::wait_ready`] later.
    pub no_ready_wait: bool,
}

impl ProgramOptions {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

impl Program {
    /// `https://127.0.0.1:<port>` or `http://...` for the main listener.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!(
            "{scheme}://{}",
            self.listen.expect("program has a listener")
        )
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Polls `/readyz` on the admin port until 200; fails fast if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), RigError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| RigError::Http(e.to_string()))?;
        let url = format!("{}/readyz", self.admin_url());
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self.process.exited() {
                return Err(RigError::Exited {
                    name: self.process.name().into(),
                    status,
                    log: self.process.log_path().to_path_buf(),
                });
            }
            match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    last = format!(
                        "HTTP {}: {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    )
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(RigError::NotReady {
            name: self.process.name().into(),
            last,
            log: self.process.log_path().to_path_buf(),
        })
    }

    /// Polls `/metrics` until it contains `needle` (e.g. `spotkube_extender_ranking_loaded 1`).
    pub async fn wait_for_metric(&self, needle: &str, timeout: Duration) -> Result<(), RigError> {
        crate::wait_for(&format!("metric `{needle}`"), timeout, || async {
            Ok(self.metrics().await?.contains(needle).then_some(()))
        })
        .await
    }

    /// GET `/metrics` from the admin port.
    pub async fn metrics(&self) -> Result<String, RigError> {
        let resp = reqwest::get(format!("{}/metrics", self.admin_url()))
            .await
            .map_err(|e| RigError::Http(e.to_string()))?;
        resp.text().await.map_err(|e| RigError::Http(e.to_string()))
    }

    /// Whether this controller replica leads now (`spotkube_controller_leader` is 1).
    pub async fn is_leader(&self) -> Result<bool, RigError> {
        let metrics = self.metrics().await?;
        Ok(crate::faults::metric_value(&metrics, "spotkube_controller_leader") == Some(1.0))
    }
}

impl Cluster {
    /// Starts `spotkube-<name>` from `$CARGO_TARGET_DIR/debug/` with `KUBECONFIG` set to the
    /// admin kubeconfig, a free `--admin-listen` port and (optionally) `--listen` + TLS,
    /// and waits for `/readyz`.
    pub async fn start_program(
        &self,
        name: &str,
        options: ProgramOptions,
    ) -> Result<Program, RigError> {
        let binary = program_binary(&format!("spotkube-{name}"));
        if !binary.exists() {
            return Err(RigError::Spawn {
                name: name.into(),
                reason: format!(
                    "{} not found (cargo build --workspace --bins)",
                    binary.display()
                ),
            });
        }
        let admin = free_addr();
        let process_name = format!("spotkube-{name}-{}", admin.port());
        let dir: PathBuf = self.dir.join("programs").join(&process_name);
        std::fs::create_dir_all(&dir).map_err(|e| RigError::io(&dir, e))?;
        let mut spec = Spec::new(&process_name, binary)
            .env("KUBECONFIG", self.kubeconfig.display().to_string())
            .env(
                "RUST_LOG",
                std::env::var("SPOTKUBE_PROGRAM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .arg(format!("--admin-listen={admin}"));
        let listen = options.listen.then(free_addr);
        if let Some(listen) = listen {
            spec = spec.arg(format!("--listen={listen}"));
        }
        let tls = if options.tls {
            let files = self
                .pki
                .ca
                .server(&dir, "serving", &["127.0.0.1", "localhost"])?;
            spec = spec
                .arg(format!("--tls-cert={}", files.cert.display()))
                .arg(format!("--tls-key={}", files.key.display()));
            Some(files)
        } else {
            None
        };
        spec = spec.args(options.args);
        for (k, v) in options.env {
            spec = spec.env(k, v);
        }
        let process = Managed::spawn(spec, &self.log_dir)?;
        let mut program = Program {
            process,
            listen,
            admin,
            tls,
        };
        program.wait_ready(Duration::from_secs(60)).await?;
        Ok(program)
    }

    /// `spotkube-webhook` over TLS (cluster CA), ready to be registered. Its drain
    /// window after SIGTERM is [`WEBHOOK_TEST_DRAIN`] unless `options` set one.
    pub async fn start_webhook(&self, options: ProgramOptions) -> Result<Program, RigError> {
        let mut env = vec![(
            "SPOTKUBE_SHUTDOWN_DRAIN".to_string(),
            format!("{}ms", WEBHOOK_TEST_DRAIN.as_millis()),
        )];
        // Later entries win: the caller's env, then its `--shutdown-drain` flag.
        env.extend(options.env);
        self.start_program(
            "webhook",
            ProgramOptions {
                tls: true,
                listen: true,
                env,
                ..options
            },
        )
        .await
    }

    /// `spotkube-extender` over plain HTTP (set `tls: true` for HTTPS).
    pub async fn start_extender(&self, options: ProgramOptions) -> Result<Program, RigError> {
        self.start_program(
            "extender",
            ProgramOptions {
                listen: true,
                ..options
            },
        )
        .await
    }

    /// `spotkube-controller` (no main listener; pass `--queue-url` etc. in `options.args`,
    /// `AWS_ENDPOINT_URL` via [`crate::aws::Moto::env`]).
    pub async fn start_controller(&self, options: ProgramOptions) -> Result<Program, RigError> {
        self.start_program(
            "controller",
            ProgramOptions {
                listen: false,
                tls: false,
                ..options
            },
        )
        .await
    }

    /// Registers `webhook` as a MutatingWebhookConfiguration `name` as shipped (see
    /// [`Cluster::register_webhook_selecting`]), restricted to the one namespace
    /// `namespace` (so parallel tests never see each other's webhooks), with
    /// `failurePolicy: Fail` so a broken webhook fails the test instead of being skipped.
    /// The shipped selector stays: only namespaces labelled `spotkube.io/enabled: "true"`
    /// (see [`Cluster::namespace_with`]), never a system namespace.
    pub async fn register_webhook(
        &self,
        name: &str,
        webhook: &Program,
        namespace: &str,
    ) -> Result<(), RigError> {
        self.register_webhook_with(name, webhook, namespace, FailurePolicy::Fail)
            .await
            .map(|_| ())
    }

    /// [`Cluster::register_webhook`] with a chosen `failurePolicy`. Returns the webhook's
    /// name, `<namespace>.pods.spotkube.io`: the `name` label of the API server's
    /// admission webhook metrics.
    pub async fn register_webhook_with(
        &self,
        name: &str,
        webhook: &Program,
        namespace: &str,
        failure_policy: FailurePolicy,
    ) -> Result<String, RigError> {
        let mut selector = shipped_webhook()?.namespace_selector.unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(
                "kubernetes.io/metadata.name".to_string(),
                namespace.to_string(),
            );
        let webhook_name = format!("{namespace}.pods.spotkube.io");
        self.register_webhook_selecting(name, &webhook_name, webhook, selector, failure_policy)
            .await?;
        Ok(webhook_name)
    }

    /// Registers `webhook` (named `webhook_name`) for the namespaces `namespace_selector`
    /// selects: the webhook entry of the rendered chart
    /// (`manifests/webhook/mutatingwebhookconfiguration.yaml`: rules, side effects,
    /// timeout, reinvocation, match policy and conditions), with only its address (the
    /// program's URL and the rig's CA instead of the in-cluster Service), its name, its
    /// selector and its `failurePolicy` replaced. Mind that a cluster-wide selector sends
    /// other tests' pods to this webhook too.
    pub async fn register_webhook_selecting(
        &self,
        name: &str,
        webhook_name: &str,
        webhook: &Program,
        namespace_selector: LabelSelector,
        failure_policy: FailurePolicy,
    ) -> Result<(), RigError> {
        if webhook.tls.is_none() {
            return Err(RigError::Certs("the webhook must serve TLS".into()));
        }
        let config = MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: webhook_name.into(),
                client_config: WebhookClientConfig {
                    url: Some(format!("{}/mutate", webhook.url())),
                    ca_bundle: Some(ByteString(self.pki.ca.files.cert_pem.clone().into_bytes())),
                    service: None,
                },
                failure_policy: Some(failure_policy.as_str().into()),
                namespace_selector: Some(namespace_selector),
                ..shipped_webhook()?
            }]),
        };
        let client = self.client().await?;
        Api::<MutatingWebhookConfiguration>::all(client)
            .create(&PostParams::default(), &config)
            .await
            .map_err(|e| {
                RigError::Kube(format!("create MutatingWebhookConfiguration {name}: {e}"))
            })?;
        Ok(())
    }
}

/// The one webhook entry of the shipped MutatingWebhookConfiguration.
pub fn shipped_webhook() -> Result<MutatingWebhook, RigError> {
    const FILE: &str = "webhook/mutatingwebhookconfiguration.yaml";
    let documents = crate::shipped::documents(FILE)?;
    let configuration = documents
        .iter()
        .find(|d| {
            d.types
                .as_ref()
                .is_some_and(|t| t.kind == "MutatingWebhookConfiguration")
        })
        .ok_or_else(|| RigError::Kube(format!("{FILE}: no MutatingWebhookConfiguration")))?;
    let mut webhooks: Vec<MutatingWebhook> =
        serde_json::from_value(configuration.data["webhooks"].clone())
            .map_err(|e| RigError::Kube(format!("{FILE}: {e}")))?;
    match webhooks.len() {
        1 => Ok(webhooks.remove(0)),
        n => Err(RigError::Kube(format!(
            "{FILE}: {n} webhooks, the rig expects one"
        ))),
    }
}
