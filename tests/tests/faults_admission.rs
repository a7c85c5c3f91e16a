//! Issue 14's fault matrix, admission row: the webhook's and the extender's serving
//! certificates rotated mid-traffic, the way a Secret update lands in a Pod (the
//! kubelet's atomic writer: a new `..<version>` directory, then the `..data` symlink
//! swapped by rename; the file names are symlinks through `..data`). Under steady load
//! (pod CREATEs through the API server for the webhook, registered with the shipped
//! `failurePolicy: Ignore`; direct HTTPS `prioritize` calls for the extender, each on a
//! new connection), no request fails, no pod is admitted unmutated, and afterwards the
//! new certificate (its serial) is the one served.
//!
//! The webhook-down half of the row (pods admitted unmutated and counted, mutation back
//! once the webhook is) is `e2e_smoke::webhook_down_with_failure_policy_ignore_...`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use spotkube_rig::programs::{FailurePolicy, ProgramOptions};
use spotkube_rig::{Cluster, TestNamespace, wait_for};

/// The two tests of this file run one after the other: on the shared control plane,
/// beside or after the rotation's pod-create load, the extender-down test's scheduler
/// bound nothing within 180 s (3 of 3 runs; alone it binds at once; cause not found),
/// so that test also runs on a private control plane.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn certificates_rotated_mid_traffic_fail_no_request() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("fault-certs", &[("spotkube.io/enabled", "true")])
        .await?;
    test.report(rotation(cluster, &test).await)
}

/// The serial number of the leaf certificate in `der`, as hex.
fn serial(der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("parsing the served certificate: {e}"))?;
    Ok(cert.tbs_certificate.raw_serial_as_string())
}

fn pem_serial(pem: &str) -> anyhow::Result<String> {
    let der = rustls_pem_der(pem)?;
    serial(&der)
}

fn rustls_pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// A client trusting the cluster CA that makes a full handshake for every request: a
/// new connection each time and no TLS session resumption (a resumed session skips the
/// certificate, so the old one would still be reported after a rotation). It reports
/// the peer certificate.
fn fresh_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(rustls_pem_der(
        ca_pem,
    )?))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .pool_max_idle_per_host(0)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// The serial of the certificate `url` serves now.
async fn served_serial(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let resp = http.get(url).send().await?;
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .ok_or_else(|| anyhow::anyhow!("no peer certificate from {url}"))?;
    serial(info)
}

/// Rotates the serving certificate in `dir` (files `serving.crt` / `serving.key`) to a
/// new one from the cluster CA, as the kubelet updates a Secret volume: the pair is
/// written to `..v<version>/`, a `..data_tmp` symlink to it is renamed over `..data`.
/// The first rotation also turns the two regular files into symlinks through `..data`
/// (one rename each), the layout of a mounted Secret. Returns the new serial.
fn rotate(cluster: &Cluster, dir: &Path, version: u32) -> anyhow::Result<String> {
    let versioned = format!("..v{version}");
    let files = cluster.pki.ca.server(
        &dir.join(&versioned),
        "serving",
        &["127.0.0.1", "localhost"],
    )?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&versioned, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for name in ["serving.crt", "serving.key"] {
        let path: PathBuf = dir.join(name);
        if !std::fs::symlink_metadata(&path)?.file_type().is_symlink() {
            let link = dir.join(format!("{name}.tmp"));
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)?;
            std::fs::rename(&link, &path)?;
        }
    }
    pem_serial(&files.cert_pem)
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    unmutated: AtomicUsize,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 10 {
            errors.push(error);
        }
    }
}

async fn rotation(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let webhook = cluster.start_webhook(ProgramOptions::default()).await?;
    let name = cluster
        .register_webhook_with(
            &format!("spotkube-{}", test.name),
            &webhook,
            &test.name,
            FailurePolicy::Ignore,
        )
        .await?;
    let extender = cluster
        .start_extender(ProgramOptions {
            tls: true,
            ..ProgramOptions::default()
        })
        .await?;
    let ca = cluster.pki.ca.files.cert_pem.clone();
    let http = fresh_client(&ca)?;
    let webhook_dir = webhook
        .tls
        .as_ref()
        .and_then(|t| t.cert.parent().map(Path::to_path_buf))
        .ok_or_else(|| anyhow::anyhow!("webhook without TLS"))?;
    let extender_dir = extender
        .tls
        .as_ref()
        .and_then(|t| t.cert.parent().map(Path::to_path_buf))
        .ok_or_else(|| anyhow::anyhow!("extender without TLS"))?;
    let series =
        format!("apiserver_admission_webhook_fail_open_count{{name=\"{name}\",type=\"admit\"}} ");
    let fail_open_before = sample(&cluster.apiserver_metrics().await?, &series).unwrap_or(0.0);

    let stop = Arc::new(AtomicBool::new(false));
    let pods_tally = Arc::new(Tally::default());
    let extender_tally = Arc::new(Tally::default());
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..2 {
        let (stop, tally) = (stop.clone(), pods_tally.clone());
        let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
        load.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": { "name": format!("load-{worker}-{i}") },
                    "spec": { "containers": [{ "name": "pause", "image": "registry.k8s.io/pause:3.10" }] },
                }))
                .expect("a valid pod");
                i += 1;
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(created) => {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                        let mutated = created
                            .metadata
                            .annotations
                            .unwrap_or_default()
                            .contains_key("spotkube.io/mutated-by");
                        if !mutated {
                            tally.unmutated.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(e) => tally.fail(format!("create pod: {e}")),
                }
            }
        });
    }
    for _ in 0..2 {
        let (stop, tally) = (stop.clone(), extender_tally.clone());
        let http = http.clone();
        let url = format!("{}/prioritize", extender.url());
        load.spawn(async move {
            let probe =
                json!({"Pod": {"metadata": {"name": "probe"}}, "Nodes": null, "NodeNames": []});
            while !stop.load(Ordering::SeqCst) {
                match http.post(&url).json(&probe).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(resp) => tally.fail(format!("prioritize: HTTP {}", resp.status())),
                    Err(e) => tally.fail(format!("prioritize: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    let webhook_url = webhook.url();
    let extender_url = extender.url();
    let mut serials = Vec::new();
    serials.push((
        served_serial(&http, &webhook_url).await?,
        served_serial(&http, &extender_url).await?,
    ));
    for version in 1..=2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let new_webhook = rotate(cluster, &webhook_dir, version)?;
        let new_extender = rotate(cluster, &extender_dir, version)?;
        for (what, url, want) in [
            ("webhook", &webhook_url, &new_webhook),
            ("extender", &extender_url, &new_extender),
        ] {
            wait_for(
                &format!("the {what} serving certificate {want}"),
                Duration::from_secs(90),
                || async {
                    let now = served_serial(&http, url)
                        .await
                        .map_err(|e| spotkube_rig::RigError::Http(e.to_string()))?;
                    Ok((&now == want).then_some(()))
                },
            )
            .await?;
        }
        serials.push((new_webhook, new_extender));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    while load.join_next().await.is_some() {}

    let fail_open_after = sample(&cluster.apiserver_metrics().await?, &series).unwrap_or(0.0);
    let (pods_ok, pods_failed, unmutated) = (
        pods_tally.ok.load(Ordering::SeqCst),
        pods_tally.failed.load(Ordering::SeqCst),
        pods_tally.unmutated.load(Ordering::SeqCst),
    );
    let (ext_ok, ext_failed) = (
        extender_tally.ok.load(Ordering::SeqCst),
        extender_tally.failed.load(Ordering::SeqCst),
    );
    let reloads = sample(
        &webhook.metrics().await?,
        "spotkube_webhook_tls_certificate_reloads_total ",
    );
    eprintln!(
        "FAULT cert-rotation: rotations=2 webhook: creates_ok={pods_ok} failed={pods_failed} unmutated={unmutated} fail_open={} \
         extender: requests_ok={ext_ok} failed={ext_failed} serials(webhook, extender)={serials:?} webhook_reloads={reloads:?}",
        fail_open_after - fail_open_before
    );
    anyhow::ensure!(
        pods_failed == 0 && ext_failed == 0,
        "failed requests: pods {:?}, extender {:?}",
        pods_tally.errors.lock().unwrap(),
        extender_tally.errors.lock().unwrap()
    );
    anyhow::ensure!(unmutated == 0, "{unmutated} pods admitted unmutated");
    anyhow::ensure!(
        fail_open_after == fail_open_before,
        "the API server failed open {} times",
        fail_open_after - fail_open_before
    );
    anyhow::ensure!(pods_ok > 0 && ext_ok > 0, "no load ran");
    anyhow::ensure!(
        serials[0] != serials[1] && serials[1] != serials[2],
        "{serials:?}"
    );
    Ok(())
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

/// The extender down with the shipped `ignorable: true`: spotkube's scheduler still
/// binds every pod (without the extender's filter and price scores), and the controller
/// says so. kube-scheduler v1.36 exports no metric for a skipped ignorable extender, so
/// the leader probes the extender (`--extender-url`) and counts the pods bound while it
/// is down: `spotkube_controller_pods_scheduled_without_extender_total`.
#[tokio::test]
async fn extender_down_with_ignorable_still_schedules_and_says_so() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    // A private control plane: after the rotation test's pod load on the shared one,
    // this scheduler bound nothing within 180 s (2 of 2 runs; cause not found).
    let cluster = &Cluster::start().await?;
    let test = cluster
        .namespace_with("fault-extender", &[("spotkube.io/enabled", "true")])
        .await?;
    test.report(extender_down(cluster, &test).await)
}

async fn extender_down(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    const POOL: &str = "spotkube.test/pool";
    spotkube_rig::FakeNode::spot("m7g.large", "us-east-1a")
        .with_label(POOL, &test.name)
        .create(&test.client)
        .await?;
    let mut extender = cluster.start_extender(ProgramOptions::default()).await?;
    let config = spotkube_rig::ExtenderConfig::shipped(extender.url());
    anyhow::ensure!(config.ignorable, "the shipped extender entry is ignorable");
    let scheduler_name = format!("spotkube-{}", test.name);
    let (_scheduler, port) = cluster
        .start_scheduler_with_port(&scheduler_name, &[config], None)
        .await?;
    let moto = spotkube_rig::aws::Moto::start().await?;
    let queues = moto.create_queue_with_dlq(&test.name, 2).await?;
    let controller = cluster
        .start_controller(
            moto.controller_options(&queues.url, &test.name)
                .arg(format!("--scheduler-name={scheduler_name}"))
                .arg(format!("--extender-url={}", extender.url()))
                .arg("--extender-probe-interval=1s"),
        )
        .await?;
    controller
        .wait_for_metric("spotkube_controller_extender_up 1", Duration::from_secs(60))
        .await?;
    extender.process.stop(Duration::from_secs(5));
    controller
        .wait_for_metric("spotkube_controller_extender_up 0", Duration::from_secs(30))
        .await?;
    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    let count = 3;
    for i in 0..count {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": format!("unpriced-{i}") },
            "spec": {
                "schedulerName": scheduler_name,
                "nodeSelector": { POOL: test.name },
                "containers": [{ "name": "pause", "image": "registry.k8s.io/pause:3.10" }],
            },
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    wait_for("every pod bound", Duration::from_secs(180), || async {
        let bound = pods
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        Ok((bound == count).then_some(()))
    })
    .await?;
    // Really down: its address refuses connections.
    anyhow::ensure!(
        reqwest::get(format!("{}/prioritize", extender.url()))
            .await
            .is_err(),
        "the extender still answers"
    );
    let http = cluster.admin_https_client()?;
    let metrics = cluster.component_metrics(&http, port).await?;
    let scheduled = metrics
        .lines()
        .find(|l| {
            l.starts_with("scheduler_schedule_attempts_total{")
                && l.contains("result=\"scheduled\"")
                && l.contains(&format!("profile=\"{scheduler_name}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    let unpriced = format!("spotkube_controller_pods_scheduled_without_extender_total {count}");
    // The leader counts once a second; 60 s leaves room for a busy CI machine.
    controller
        .wait_for_metric(&unpriced, Duration::from_secs(60))
        .await?;
    eprintln!(
        "FAULT extender-down-ignorable: pods={count} bound={count} scheduler_schedule_attempts_total{{result=scheduled}}={scheduled:?} {unpriced}"
    );
    anyhow::ensure!(
        scheduled == Some(count as f64),
        "the spotkube scheduler profile scheduled {scheduled:?} pods"
    );
    Ok(())
}
