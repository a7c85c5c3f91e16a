//! The controller's ranking refresher on the rig: `spotkube-controller run
//! --publish-ranking` writes ConfigMap spotkube-system/spotkube-ranking, rewrites it only
//! when the ranking changes, and keeps the last good ranking when a refresh fails.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use spotkube_rig::aws::Moto;
use spotkube_rig::nodes::price_snapshot_path;
use spotkube_rig::programs::{Program, ProgramOptions};
use spotkube_rig::{Cluster, TestNamespace, wait_for};
use spotkube_shared::ranking::Ranking;

#[tokio::test]
async fn publishes_only_on_change_and_keeps_the_last_good_ranking() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("ranking").await?;
    test.report(scenario(cluster, &test).await)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

async fn wait_metric(program: &Program, name: &str, at_least: u64) -> anyhow::Result<()> {
    wait_for(
        &format!("{name} >= {at_least}"),
        Duration::from_secs(30),
        || async { Ok((metric(&program.metrics().await?, name) >= at_least).then_some(())) },
    )
    .await?;
    Ok(())
}

async fn scenario(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(test.client.clone());
    if namespaces.get_opt("spotkube-system").await?.is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "spotkube-system"}}))?,
            )
            .await?;
    }
    let moto = Moto::start().await?;
    let queues = moto.create_queue_with_dlq(&test.name, 3).await?;
    let dir = tempfile::tempdir()?;
    let snapshot = dir.path().join("snapshot.json");
    let original = std::fs::read_to_string(price_snapshot_path())?;
    std::fs::write(&snapshot, &original)?;

    let mut options = ProgramOptions::default()
        .arg("run")
        .arg(format!("--queue-url={}", queues.url))
        .arg(format!("--lease-namespace={}", test.name))
        .arg("--lease-duration=3")
        .arg("--publish-ranking")
        .arg("--source=snapshot")
        .arg(format!("--snapshot={}", snapshot.display()))
        .arg("--ranking-interval=1s");
    for (k, v) in moto.env() {
        options = options.env(k, v);
    }
    let controller = cluster.start_controller(options).await?;

    let cms: Api<ConfigMap> = Api::namespaced(test.client.clone(), "spotkube-system");
    let read = || async {
        let cm = cms.get("spotkube-ranking").await?;
        let ranking = Ranking::from_json(&cm.data.unwrap_or_default()["ranking.json"])?;
        anyhow::Ok((cm.metadata.resource_version.unwrap(), ranking))
    };
    wait_metric(&controller, "spotkube_ranking_configmap_writes_total", 1).await?;
    let (version, first) = read().await?;
    assert_eq!(first.source, "snapshot");
    assert_eq!(first.zones["us-east-1a"][0].instance_type, "c7g.4xlarge");

    // Unchanged prices: refreshes happen, writes do not.
    wait_metric(&controller, "spotkube_ranking_refreshes_total", 4).await?;
    let text = controller.metrics().await?;
    assert_eq!(
        metric(&text, "spotkube_ranking_configmap_writes_total"),
        1,
        "{text}"
    );
    assert_eq!(read().await?.0, version);

    // A broken source: refreshes fail, the last good ranking stays published.
    std::fs::write(&snapshot, "not json")?;
    wait_metric(&controller, "spotkube_ranking_refresh_failures_total", 2).await?;
    assert_eq!(read().await?, (version.clone(), first.clone()));

    // New prices: m7g.xlarge at 90 % savings becomes rank 1 and the ConfigMap is rewritten.
    let mut doc: Value = serde_json::from_str(&original)?;
    doc["regions"]["us-east-1"]["spot"]["m7g.xlarge"]["savings_percent"] = json!(90);
    std::fs::write(&snapshot, serde_json::to_string(&doc)?)?;
    wait_metric(&controller, "spotkube_ranking_configmap_writes_total", 2).await?;
    let (new_version, second) = read().await?;
    assert_ne!(new_version, version);
    for zone in ["us-east-1a", "us-east-1b", "us-east-1c"] {
        assert_eq!(second.zones[zone][0].instance_type, "m7g.xlarge");
    }
    Ok(())
}
