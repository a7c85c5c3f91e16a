//! The controller as shipped publishes the price ranking: started with exactly the
//! args and env of `manifests/controller/deployment.yaml` (only the AWS endpoints and
//! the queue point at moto) under its shipped RBAC, its leader writes ConfigMap
//! spotkube-system/spotkube-ranking, which the extender scores nodes by.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use spotkube_rig::aws::Moto;
use spotkube_rig::shipped;
use spotkube_rig::{Cluster, TestNamespace, wait_for};
use spotkube_shared::ranking::Ranking;

#[tokio::test]
async fn the_shipped_controller_publishes_the_ranking() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("shipped-ranking").await?;
    test.report(scenario(cluster, &test).await)
}

async fn scenario(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let queues = moto.create_queue_with_dlq(&test.name, 5).await?;
    let (controller, container) =
        shipped::start_controller(cluster, &moto, &queues.url, &[]).await?;
    assert!(
        container.env_value("SPOTKUBE_QUEUE_URL").is_some(),
        "the manifest names its queue: {container:?}"
    );

    let cms: Api<ConfigMap> = Api::namespaced(test.client.clone(), &container.namespace);
    let ranking = wait_for("the ranking ConfigMap", Duration::from_secs(60), || async {
        let Some(cm) = cms.get_opt("spotkube-ranking").await? else {
            return Ok(None);
        };
        let json = cm.data.unwrap_or_default().remove("ranking.json");
        Ok(json.map(|j| Ranking::from_json(&j)).transpose()?)
    })
    .await?;
    // Ranked from moto's EC2 catalogue and prices, as `--source aws` does in a cluster.
    assert_eq!(ranking.source, "aws");
    assert_eq!(
        ranking.zones.keys().collect::<Vec<_>>(),
        ["us-east-1a", "us-east-1b", "us-east-1c"]
    );
    assert!(ranking.zones.values().all(|types| !types.is_empty()));
    let metrics = controller.metrics().await?;
    assert!(
        metrics.contains("spotkube_ranking_configmap_writes_total 1"),
        "{metrics}"
    );
    Ok(())
}
