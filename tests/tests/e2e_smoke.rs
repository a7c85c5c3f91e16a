//! The smoke test: the whole chain on a real control plane.
//!
//! opted-in Namespace + Deployment → kube-apiserver calls the real `spotkube-webhook` →
//! pods carry the injected spot affinity and spotkube's scheduler name → a second
//! kube-scheduler (profile = that name) calls the real `spotkube-extender` → pods bind to
//! kwok spot nodes and become Ready → the Service's EndpointSlice lists them.
//!
//! Needs `cargo build --workspace --bins` first (the rig runs the built binaries).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use spotkube_rig::programs::ProgramOptions;
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
    let mut extender_config = ExtenderConfig::spotkube(extender.url());
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
