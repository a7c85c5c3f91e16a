//! End to end on the rig: where the webhook's node affinity alone puts pods, without the
//! extender (which the shipped scheduler configuration marks `ignorable`).
//!
//! Needs `cargo build --workspace --bins` first (the rig runs the built binaries).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{
    Cluster, ExtenderConfig, FakeNode, TestNamespace, wait_for, wait_for_schedulable_nodes,
    workloads,
};

const POOL_LABEL: &str = "spotkube.test/pool";

/// `capacity: on-demand` holds when the extender is gone: the scheduler skips an
/// ignorable extender it cannot reach, and only the webhook's required `NotIn spot`
/// keeps the pods off the spot nodes.
#[tokio::test]
async fn on_demand_pods_land_on_on_demand_nodes_with_the_extender_stopped() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with(
            "on-demand",
            &[
                ("spotkube.io/enabled", "true"),
                ("spotkube.io/capacity", "on-demand"),
            ],
        )
        .await?;
    test.report(on_demand_without_extender(cluster, &test).await)
}

async fn on_demand_without_extender(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    // Three spot nodes and one on-demand node: the default spreading alone would put
    // most of four replicas on spot.
    for zone in spotkube_rig::ZONES {
        FakeNode::spot("m7g.large", zone)
            .with_label(POOL_LABEL, &test.name)
            .create(&test.client)
            .await?;
    }
    let on_demand = FakeNode::on_demand("m7g.large", "us-east-1a")
        .with_label(POOL_LABEL, &test.name)
        .create(&test.client)
        .await?
        .metadata
        .name
        .expect("node name");
    wait_for_schedulable_nodes(
        &test.client,
        &format!("{POOL_LABEL}={}", test.name),
        4,
        Duration::from_secs(60),
    )
    .await?;

    // spotkube's scheduler profile as shipped (extender ignorable), then the extender gone.
    let mut extender = cluster.start_extender(ProgramOptions::default()).await?;
    let scheduler_name = format!("spotkube-{}", test.name);
    let mut extender_config = ExtenderConfig::shipped(extender.url());
    extender_config.ignorable = true;
    let _scheduler = cluster
        .start_scheduler(&scheduler_name, &[extender_config])
        .await?;
    extender.process.stop(Duration::from_secs(15));
    let refused = reqwest::Client::new()
        .post(format!("{}/filter", extender.url()))
        .send()
        .await;
    anyhow::ensure!(refused.is_err(), "the extender still answers: {refused:?}");

    let webhook = cluster
        .start_webhook(ProgramOptions::default().arg(format!("--scheduler-name={scheduler_name}")))
        .await?;
    cluster
        .register_webhook(&format!("spotkube-{}", test.name), &webhook, &test.name)
        .await?;

    let deploy =
        workloads::with_node_selector(workloads::deployment("web", 4), POOL_LABEL, &test.name);
    workloads::create_with_service(&test.client, &test.name, &deploy).await?;
    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    let placed: BTreeMap<String, String> =
        wait_for("4 pods scheduled", Duration::from_secs(90), || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let bound: BTreeMap<String, String> = list
                .items
                .iter()
                .filter_map(|p| {
                    Some((
                        p.metadata.name.clone()?,
                        p.spec.as_ref()?.node_name.clone()?,
                    ))
                })
                .collect();
            Ok((bound.len() == 4).then_some(bound))
        })
        .await?;

    let nodes: Api<Node> = Api::all(test.client.clone());
    for (pod, node) in &placed {
        let labels = nodes.get(node).await?.metadata.labels.unwrap_or_default();
        anyhow::ensure!(
            node == &on_demand,
            "pod {pod} landed on {node} ({:?}), not on the on-demand node {on_demand}",
            labels.get("karpenter.sh/capacity-type")
        );
    }
    // What kept them there: the webhook's required term, on the pods themselves.
    let pod = pods.get(placed.keys().next().expect("a pod")).await?;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()),
        Some(scheduler_name.as_str()),
        "scheduled by spotkube's profile, whose extender is down"
    );
    let required = serde_json::to_value(
        pod.spec
            .and_then(|s| s.affinity)
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution),
    )?;
    assert_eq!(
        required,
        serde_json::json!({"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "karpenter.sh/capacity-type", "operator": "NotIn", "values": ["spot"]},
            {"key": "eks.amazonaws.com/capacityType", "operator": "NotIn", "values": ["SPOT"]}
        ]}]})
    );
    Ok(())
}
