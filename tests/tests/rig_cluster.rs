//! Rig self-tests: the control plane, kwok and the scheduler behave like a real cluster.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use spotkube_rig::{
    Cluster, FakeNode, TestNamespace, nodes, wait_for, wait_for_ready_endpoints, wait_for_rollout,
    workloads,
};

#[tokio::test]
async fn kwok_nodes_become_ready_with_eks_labels() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("nodes").await?;
    test.report(nodes_scenario(&test).await)
}

async fn nodes_scenario(test: &TestNamespace) -> anyhow::Result<()> {
    let spot = FakeNode::spot("m7g.large", "us-east-1a")
        .create(&test.client)
        .await?;
    let fargate = FakeNode::fargate("us-east-1b").create(&test.client).await?;
    let nodes: Api<Node> = Api::all(test.client.clone());
    for node in [&spot, &fargate] {
        let name = node.metadata.name.clone().unwrap();
        let ready = wait_for(
            &format!("node {name} Ready"),
            Duration::from_secs(30),
            || async {
                let n = nodes.get(&name).await?;
                Ok(nodes::is_ready(&n).then_some(n))
            },
        )
        .await?;
        assert!(
            ready
                .spec
                .unwrap()
                .provider_id
                .unwrap()
                .starts_with("aws:///us-east-1")
        );
    }
    let spot = nodes.get(spot.metadata.name.as_deref().unwrap()).await?;
    let labels = spot.metadata.labels.unwrap();
    assert_eq!(labels["node.kubernetes.io/instance-type"], "m7g.large");
    assert_eq!(labels["karpenter.sh/capacity-type"], "spot");
    assert_eq!(spot.status.unwrap().allocatable.unwrap()["cpu"].0, "1930m");
    Ok(())
}

#[tokio::test]
async fn deployment_rolls_out_on_kwok_nodes_and_its_endpoint_slice_fills() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("rollout").await?;
    test.report(rollout_scenario(&test).await)
}

async fn rollout_scenario(test: &TestNamespace) -> anyhow::Result<()> {
    // A node pool only this test's pods select, so other tests' nodes don't matter.
    for zone in ["us-east-1a", "us-east-1b"] {
        FakeNode::on_demand("m7i.large", zone)
            .with_label("spotkube.test/pool", &test.name)
            .create(&test.client)
            .await?;
    }
    let deploy = workloads::with_node_selector(
        workloads::deployment("web", 3),
        "spotkube.test/pool",
        &test.name,
    );
    workloads::create_with_service(&test.client, &test.name, &deploy).await?;

    wait_for_rollout(&test.client, &test.name, "web", Duration::from_secs(60)).await?;
    let ready =
        wait_for_ready_endpoints(&test.client, &test.name, "web", 3, Duration::from_secs(30))
            .await?;
    assert_eq!(ready, 3);

    // The real scheduler bound every pod to one of the pool's nodes, and kwok gave each an IP.
    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(list.items.len(), 3);
    for pod in &list.items {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .expect("pod is bound");
        assert!(node.starts_with("ip-10-"), "bound to {node}");
        assert!(
            pod.status.as_ref().and_then(|s| s.pod_ip.clone()).is_some(),
            "pod has an IP"
        );
    }

    // kwok finalizes deleted pods (no kubelet would), so deletion completes.
    let victim = list.items[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default()).await?;
    wait_for(
        &format!("pod {victim} gone"),
        Duration::from_secs(30),
        || async { Ok(pods.get_opt(&victim).await?.is_none().then_some(())) },
    )
    .await?;
    wait_for_rollout(&test.client, &test.name, "web", Duration::from_secs(60)).await?;
    Ok(())
}
