//! The node registrar stand-in (`spotkube_rig::registrar`) on its own, against a private
//! moto and the shared cluster: instances launched straight through EC2 RunInstances (no
//! Auto Scaling) become kwok Nodes after the join delay, labelled like EKS's, and lose
//! them when terminated.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    InstanceMarketOptionsRequest, InstanceType, MarketType, Placement, ResourceType, Tag,
    TagSpecification,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams};
use spotkube_rig::aws::{Moto, TEST_AMI};
use spotkube_rig::nodes::is_ready;
use spotkube_rig::{Cluster, Registrar, RegistrarOptions, wait_for};

const POOL: &str = "spotkube.test/pool";
const JOIN_DELAY: Duration = Duration::from_secs(2);

/// RunInstances of one instance with `tags`; its id.
async fn launch(
    moto: &Moto,
    instance_type: &str,
    zone: &str,
    spot: bool,
    tags: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut request = moto
        .ec2()
        .await
        .run_instances()
        .image_id(TEST_AMI)
        .instance_type(InstanceType::from(instance_type))
        .placement(Placement::builder().availability_zone(zone).build())
        .min_count(1)
        .max_count(1);
    if spot {
        request = request.instance_market_options(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .build(),
        );
    }
    if !tags.is_empty() {
        let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(*k).value(*v).build());
        }
        request = request.tag_specifications(spec.build());
    }
    let out = request.send().await?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("RunInstances returned no instance"))
}

async fn terminate(moto: &Moto, id: &str) -> anyhow::Result<()> {
    moto.ec2()
        .await
        .terminate_instances()
        .instance_ids(id)
        .send()
        .await?;
    Ok(())
}

/// The Node whose providerID names `instance_id`, if any.
async fn node_of(client: &kube::Client, instance_id: &str) -> anyhow::Result<Option<Node>> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(nodes.items.into_iter().find(|n| {
        n.spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .is_some_and(|p| p.ends_with(&format!("/{instance_id}")))
    }))
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

#[tokio::test]
async fn running_instances_join_as_nodes_and_leave_when_terminated() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("registrar").await?;
    let moto = Moto::start().await?;
    let cluster_tag = format!("kubernetes.io/cluster/{}", test.name);
    let registrar = Registrar::start(
        &moto,
        test.client.clone(),
        RegistrarOptions::default()
            .join_delay(JOIN_DELAY)
            .tagged(&cluster_tag, Some("owned"))
            .label(POOL, &test.name),
    )
    .await;

    // Launched first, so it would join no later than the others if the tag filter failed.
    let stranger = launch(&moto, "m7g.large", "us-east-1a", true, &[]).await?;
    let launched = Instant::now();
    let owned = [(cluster_tag.as_str(), "owned")];
    let spot = launch(&moto, "m7g.large", "us-east-1b", true, &owned).await?;
    let on_demand = launch(&moto, "c7g.xlarge", "us-east-1c", false, &owned).await?;

    let expected = [
        (&spot, "m7g.large", "us-east-1b", "SPOT", "spot"),
        (
            &on_demand,
            "c7g.xlarge",
            "us-east-1c",
            "ON_DEMAND",
            "on-demand",
        ),
    ];
    for (id, instance_type, zone, eks, karpenter) in expected {
        let node = wait_for(
            &format!("a Node for {id}"),
            Duration::from_secs(60),
            || async { node_of(&test.client, id).await },
        )
        .await?;
        assert!(
            launched.elapsed() >= JOIN_DELAY,
            "{id} joined before its join delay"
        );
        let spec = node.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.provider_id.as_deref(),
            Some(format!("aws:///{zone}/{id}").as_str())
        );
        assert_eq!(
            label(&node, "node.kubernetes.io/instance-type"),
            Some(instance_type)
        );
        assert_eq!(label(&node, "topology.kubernetes.io/zone"), Some(zone));
        assert_eq!(label(&node, "eks.amazonaws.com/capacityType"), Some(eks));
        assert_eq!(label(&node, "karpenter.sh/capacity-type"), Some(karpenter));
        assert_eq!(label(&node, POOL), Some(test.name.as_str()));
        let name = node.metadata.name.clone().unwrap_or_default();
        assert_eq!(registrar.node_name(id).as_deref(), Some(name.as_str()));
        let nodes: Api<Node> = Api::all(test.client.clone());
        wait_for(
            &format!("Node {name} Ready (kwok)"),
            Duration::from_secs(60),
            || async { Ok(nodes.get_opt(&name).await?.filter(is_ready).map(|_| ())) },
        )
        .await?;
    }
    assert!(
        node_of(&test.client, &stranger).await?.is_none(),
        "an instance without the cluster tag joined"
    );

    terminate(&moto, &spot).await?;
    wait_for(
        &format!("the Node of terminated {spot} gone"),
        Duration::from_secs(60),
        || async { Ok(node_of(&test.client, &spot).await?.is_none().then_some(())) },
    )
    .await?;
    assert!(registrar.node_name(&spot).is_none());
    assert!(
        node_of(&test.client, &on_demand).await?.is_some(),
        "the running instance kept its Node"
    );

    // Stopped: a new instance never joins, the remaining Node stays.
    registrar.stop().await;
    let late = launch(&moto, "m7g.large", "us-east-1a", true, &owned).await?;
    tokio::time::sleep(JOIN_DELAY + Duration::from_secs(2)).await;
    assert!(
        node_of(&test.client, &late).await?.is_none(),
        "an instance joined after the registrar stopped"
    );

    let leftover = node_of(&test.client, &on_demand)
        .await?
        .and_then(|n| n.metadata.name)
        .ok_or_else(|| anyhow::anyhow!("the Node of {on_demand} vanished"))?;
    Api::<Node>::all(test.client.clone())
        .delete(&leftover, &DeleteParams::default())
        .await?;
    Ok(())
}
