//! Rig self-tests: the control plane, kwok and the scheduler behave like a real cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, Pod, PodSpec, PodTemplateSpec, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use spotkube_rig::{
    Cluster, FakeNode, TestNamespace, nodes, wait_for, wait_for_ready_endpoints, wait_for_rollout,
};

/// A Deployment of `replicas` pods labelled `app=<name>`, plus a Service selecting them.
fn deployment(
    name: &str,
    replicas: i32,
    node_selector: BTreeMap<String, String>,
) -> (Deployment, Service) {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_selector: Some(node_selector),
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("registry.k8s.io/pause:3.10".into()),
                        ports: Some(vec![ContainerPort {
                            container_port: 8080,
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    (deployment, service)
}

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
    let pool = BTreeMap::from([("spotkube.test/pool".to_string(), test.name.clone())]);
    for zone in ["us-east-1a", "us-east-1b"] {
        FakeNode::on_demand("m7i.large", zone)
            .with_label("spotkube.test/pool", &test.name)
            .create(&test.client)
            .await?;
    }
    let (deploy, svc) = deployment("web", 3, pool);
    Api::<Deployment>::namespaced(test.client.clone(), &test.name)
        .create(&PostParams::default(), &deploy)
        .await?;
    Api::<Service>::namespaced(test.client.clone(), &test.name)
        .create(&PostParams::default(), &svc)
        .await?;

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
