//! The smoke test: the whole chain on a real control plane.
//!
//! opted-in Namespace + Deployment → kube-apiserver calls the real `spotkube-webhook` →
//! pods carry the injected spot affinity and spotkube's scheduler name → a second
//! kube-scheduler (profile = that name) calls the real `spotkube-extender` → pods bind to
//! kwok spot nodes and become Ready → the Service's EndpointSlice lists them.
//!
//! Needs `cargo build --workspace --bins` first (the rig runs the built binaries).

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use spotkube_rig::programs::{FailurePolicy, ProgramOptions};
use spotkube_rig::{
    Cluster, ExtenderConfig, FakeNode, TestNamespace, wait_for_ready_endpoints, wait_for_rollout,
    workloads,
};

const POOL_LABEL: &str = "spotkube.test/pool";

#[tokio::test]
async fn webhook_and_extender_put_an_opted_in_deployment_on_spot_nodes() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("smoke", &[("spotkube.io/enabled", "true")])
        .await?;
    test.report(smoke(cluster, &test).await)
}

async fn smoke(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    // Nodes: spot in three AZs, one on-demand — a pool only this test's pods select.
    for zone in spotkube_rig::ZONES {
        FakeNode::spot("m7g.large", zone)
            .with_label(POOL_LABEL, &test.name)
            .create(&test.client)
            .await?;
    }
    FakeNode::on_demand("m7g.large", "us-east-1a")
        .with_label(POOL_LABEL, &test.name)
        .create(&test.client)
        .await?;

    // The extender, and a kube-scheduler profile that calls it (not ignorable: if the
    // extender fails, scheduling fails and so does this test).
    let extender = cluster.start_extender(ProgramOptions::default()).await?;
    let scheduler_name = format!("spotkube-{}", test.name);
    let mut extender_config = ExtenderConfig::shipped(extender.url());
    extender_config.ignorable = false;
    let _scheduler = cluster
        .start_scheduler(&scheduler_name, &[extender_config])
        .await?;

    // The webhook, registered for this namespace only, setting that scheduler name.
    let webhook = cluster
        .start_webhook(ProgramOptions::default().arg(format!("--scheduler-name={scheduler_name}")))
        .await?;
    cluster
        .register_webhook(&format!("spotkube-{}", test.name), &webhook, &test.name)
        .await?;

    let deploy =
        workloads::with_node_selector(workloads::deployment("web", 3), POOL_LABEL, &test.name);
    workloads::create_with_service(&test.client, &test.name, &deploy).await?;
    wait_for_rollout(&test.client, &test.name, "web", Duration::from_secs(90)).await?;
    let ready =
        wait_for_ready_endpoints(&test.client, &test.name, "web", 3, Duration::from_secs(30))
            .await?;
    assert_eq!(
        ready, 3,
        "the Service's EndpointSlice lists every pod as ready"
    );

    let pods = Api::<Pod>::namespaced(test.client.clone(), &test.name)
        .list(&ListParams::default().labels("app=web"))
        .await?;
    let nodes: Api<Node> = Api::all(test.client.clone());
    assert_eq!(pods.items.len(), 3);
    for pod in &pods.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert!(
            annotations.contains_key("spotkube.io/mutated-by"),
            "{name}: mutated by the webhook"
        );
        assert!(
            annotations.contains_key("spotkube.io/protection"),
            "{name}: protection recorded"
        );
        let spec = pod.spec.as_ref().expect("pod spec");
        assert_eq!(
            spec.scheduler_name.as_deref(),
            Some(scheduler_name.as_str()),
            "{name}: scheduled by spotkube's profile"
        );
        let preferred = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        assert!(
            preferred.iter().any(|term| term
                .preference
                .match_expressions
                .iter()
                .flatten()
                .any(|e| e.key == "karpenter.sh/capacity-type"
                    && e.values.iter().flatten().any(|v| v == "spot"))),
            "{name}: spot affinity injected: {preferred:?}"
        );
        let node_name = spec.node_name.as_deref().expect("bound");
        let node = nodes.get(node_name).await?;
        let labels = node.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get(POOL_LABEL),
            Some(&test.name),
            "{name} on this test's pool"
        );
        assert_eq!(
            labels.get("karpenter.sh/capacity-type").map(String::as_str),
            Some("spot"),
            "{name} on a spot node"
        );
    }

    // The scheduler really called the extender for both verbs.
    let metrics = extender.metrics().await?;
    for verb in ["filter", "prioritize"] {
        let calls: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("spotkube_extender_request_duration_seconds_count")
                    && l.to_lowercase().contains(&format!("verb=\"{verb}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(calls >= 3.0, "extender {verb} calls: {calls}\n{metrics}");
    }
    Ok(())
}

/// A bare pause pod (no node selector: these tests only look at admission).
fn bare_pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    }))?)
}

/// The value of the Prometheus sample whose line starts with `series` (labels included).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A rollout of the webhook: on SIGTERM it reports not ready at once but keeps admitting
/// (and mutating) pods through its drain window, then exits cleanly. Its certificate's
/// expiry and failed reloads are on `/metrics`.
#[tokio::test]
async fn webhook_keeps_mutating_through_its_drain_window_after_sigterm() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("drain", &[("spotkube.io/enabled", "true")])
        .await?;
    test.report(drain(cluster, &test).await)
}

async fn drain(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    const DRAIN: Duration = Duration::from_secs(4);
    let mut webhook = cluster
        .start_webhook(
            ProgramOptions::default().arg(format!("--shutdown-drain={}s", DRAIN.as_secs())),
        )
        .await?;
    cluster
        .register_webhook(&format!("spotkube-{}", test.name), &webhook, &test.name)
        .await?;

    // The served certificate's expiry (the rig's certificates keep rcgen's default).
    let expiry = rcgen::CertificateParams::default()
        .not_after
        .unix_timestamp();
    let metrics = webhook.metrics().await?;
    assert_eq!(
        sample(&metrics, "spotkube_webhook_tls_certificate_expiry_seconds "),
        Some(expiry as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "spotkube_webhook_tls_certificate_reload_failures_total "
        ),
        Some(0.0),
        "{metrics}"
    );
    // A broken rotation is counted; the last good certificate keeps serving.
    let tls = webhook.tls.clone().expect("the webhook serves TLS");
    std::fs::write(&tls.cert, "not a certificate")?;
    let metrics = spotkube_rig::wait_for(
        "a failed reload counted",
        Duration::from_secs(10),
        || async {
            let metrics = webhook.metrics().await?;
            let failures = sample(
                &metrics,
                "spotkube_webhook_tls_certificate_reload_failures_total ",
            );
            Ok(failures.is_some_and(|n| n >= 1.0).then_some(metrics))
        },
    )
    .await?;
    assert_eq!(
        sample(&metrics, "spotkube_webhook_tls_certificate_expiry_seconds "),
        Some(expiry as f64),
        "{metrics}"
    );

    webhook.process.terminate();
    let terminated = std::time::Instant::now();
    let http = reqwest::Client::new();
    let readyz = format!("{}/readyz", webhook.admin_url());
    spotkube_rig::wait_for("/readyz to fail", Duration::from_secs(2), || async {
        let resp = http.get(&readyz).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        Ok((status == 503 && body.contains("serving")).then_some(()))
    })
    .await?;

    // Inside the drain window, pods are still mutated (failurePolicy Fail: a webhook
    // that stopped answering would make this create fail).
    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    let created = pods
        .create(&PostParams::default(), &bare_pod("during-drain")?)
        .await?;
    anyhow::ensure!(
        terminated.elapsed() < DRAIN,
        "the pod was created after the drain window; the test proves nothing"
    );
    let annotations = created.metadata.annotations.unwrap_or_default();
    assert!(
        annotations.contains_key("spotkube.io/mutated-by"),
        "mutated during the drain window: {annotations:?}"
    );
    assert!(webhook.process.exited().is_none(), "still running");

    let status = loop {
        if let Some(status) = webhook.process.exited() {
            break status;
        }
        anyhow::ensure!(
            terminated.elapsed() < DRAIN + Duration::from_secs(10),
            "the webhook did not exit after its drain window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        terminated.elapsed() >= DRAIN,
        "exited before the drain window was over"
    );
    assert_eq!(status, "exit status: 0");
    Ok(())
}

/// spotkube ships `failurePolicy: Ignore`: with the webhook down, pods are still
/// created, unmutated, and the API server counts each one it let through; once a webhook
/// answers again (a new process, re-registered at its address), mutation resumes.
#[tokio::test]
async fn webhook_down_with_failure_policy_ignore_admits_pods_unmutated_and_counted()
-> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("ignore", &[("spotkube.io/enabled", "true")])
        .await?;
    test.report(ignored(cluster, &test).await)
}

async fn ignored(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let mut webhook = cluster.start_webhook(ProgramOptions::default()).await?;
    let name = cluster
        .register_webhook_with(
            &format!("spotkube-{}", test.name),
            &webhook,
            &test.name,
            FailurePolicy::Ignore,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    let up = pods
        .create(&PostParams::default(), &bare_pod("webhook-up")?)
        .await?;
    assert!(
        up.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("spotkube.io/mutated-by"),
        "the registration works while the webhook is up"
    );

    webhook.process.stop(Duration::from_secs(10));
    let series =
        format!("apiserver_admission_webhook_fail_open_count{{name=\"{name}\",type=\"admit\"}} ");
    let before = sample(&cluster.apiserver_metrics().await?, &series).unwrap_or(0.0);
    for i in 0..2 {
        let created = pods
            .create(
                &PostParams::default(),
                &bare_pod(&format!("webhook-down-{i}"))?,
            )
            .await?;
        let annotations = created.metadata.annotations.unwrap_or_default();
        assert!(
            !annotations.keys().any(|k| k.starts_with("spotkube.io/")),
            "unmutated: {annotations:?}"
        );
        assert_eq!(
            created.spec.and_then(|s| s.scheduler_name).as_deref(),
            Some("default-scheduler")
        );
    }
    let after = sample(&cluster.apiserver_metrics().await?, &series);
    assert_eq!(after, Some(before + 2.0), "{series}");

    // Back: pods are mutated again (once the API server sees the new registration),
    // and nothing more fails open.
    let webhook = cluster.start_webhook(ProgramOptions::default()).await?;
    let config = format!("spotkube-{}", test.name);
    Api::<MutatingWebhookConfiguration>::all(test.client.clone())
        .delete(&config, &DeleteParams::default())
        .await?;
    cluster
        .register_webhook_with(&config, &webhook, &test.name, FailurePolicy::Ignore)
        .await?;
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    spotkube_rig::wait_for(
        "mutation resumed once the webhook is back",
        Duration::from_secs(30),
        || async {
            let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let pod = bare_pod(&format!("webhook-back-{n}"))
                .map_err(|e| spotkube_rig::RigError::Kube(e.to_string()))?;
            let back = pods.create(&PostParams::default(), &pod).await?;
            let mutated = back
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key("spotkube.io/mutated-by");
            Ok(mutated.then_some(()))
        },
    )
    .await?;
    let last = sample(&cluster.apiserver_metrics().await?, &series);
    assert_eq!(last, after, "{series}");
    Ok(())
}
