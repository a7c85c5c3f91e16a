//! End to end on the rig: the real kube-scheduler, running a second profile
//! `spotkube-scheduler` that calls spotkube-extender, places a Deployment on the
//! cheapest ranked nodes; a node marked as interrupted receives no new pods.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use spotkube_rig::nodes::price_snapshot_path;
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::tools::program_binary;
use spotkube_rig::{
    Cluster, ExtenderConfig, FakeNode, TestNamespace, ZONES, wait_for, wait_for_schedulable_nodes,
    workloads,
};
use spotkube_shared::ranking::Ranking;

const SCHEDULER: &str = "spotkube-scheduler";

#[tokio::test]
async fn scheduler_prefers_the_cheapest_ranked_nodes_and_avoids_interrupted_ones()
-> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("extender").await?;
    test.report(scenario(cluster, &test).await)
}

/// The snapshot ranking, exactly as `spotkube-controller rank` publishes it.
async fn snapshot_ranking() -> anyhow::Result<String> {
    let output = tokio::process::Command::new(program_binary("spotkube-controller"))
        .args([
            "rank",
            "--source",
            "snapshot",
            "--output",
            "json",
            "--snapshot",
        ])
        .arg(price_snapshot_path())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "rank: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

async fn scenario(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let client = test.client.clone();
    let pool = test.name.clone();

    // Per zone: rank 1 (c7g.4xlarge), rank 6 (m7g.large), unranked spot (r7g.large:
    // interruption band 4), and an on-demand c7g.4xlarge.
    let mut cheapest: BTreeMap<&str, String> = BTreeMap::new();
    for zone in ZONES {
        for (node, rank_one) in [
            (FakeNode::spot("c7g.4xlarge", zone), true),
            (FakeNode::spot("m7g.large", zone), false),
            (FakeNode::spot("r7g.large", zone), false),
            (FakeNode::on_demand("c7g.4xlarge", zone), false),
        ] {
            let node = node.with_label("spotkube.test/pool", &pool);
            let created = node.create(&client).await?;
            let name = created.metadata.name.unwrap();
            if rank_one {
                cheapest.insert(zone, name.clone());
            }
        }
    }
    wait_for_schedulable_nodes(
        &client,
        &format!("spotkube.test/pool={pool}"),
        12,
        Duration::from_secs(60),
    )
    .await?;

    let ranking = snapshot_ranking().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &test.name);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "spotkube-ranking"},
            "data": {"ranking.json": ranking},
        }))?,
    )
    .await?;

    let extender = cluster
        .start_extender(ProgramOptions {
            args: vec![format!(
                "--ranking-configmap={}/spotkube-ranking",
                test.name
            )],
            ..Default::default()
        })
        .await?;
    extender
        .wait_for_metric(
            "spotkube_extender_ranking_loaded 1",
            Duration::from_secs(30),
        )
        .await?;
    let mut config = ExtenderConfig::shipped(extender.url());
    config.weight = 5;
    let _scheduler = cluster.start_scheduler(SCHEDULER, &[config]).await?;

    // 6 replicas land on the three rank-1 spot nodes only.
    let mut deployment =
        workloads::with_node_selector(workloads::deployment("web", 6), "spotkube.test/pool", &pool);
    set_scheduler(&mut deployment);
    Api::<Deployment>::namespaced(client.clone(), &test.name)
        .create(&PostParams::default(), &deployment)
        .await?;
    let placed = scheduled_pods(&client, &test.name, 6).await?;
    let ranked: BTreeSet<&String> = cheapest.values().collect();
    for (pod, node) in &placed {
        anyhow::ensure!(
            ranked.contains(node),
            "pod {pod} landed on {node}, not on a rank-1 node {ranked:?}"
        );
    }

    // Mark the us-east-1a rank-1 node as interrupted (annotation only: the extender,
    // not a taint, keeps pods off it) and scale up.
    let interrupted = cheapest["us-east-1a"].clone();
    let notice =
        json!({"kind": "spot-interruption", "deadline": "2099-01-01T00:00:00Z"}).to_string();
    Api::<Node>::all(client.clone())
        .patch(
            &interrupted,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"spotkube.io/interruption": notice}}}),
            ),
        )
        .await?;
    let http = reqwest::Client::new();
    let probe = json!({"Pod": {"metadata": {"name": "probe", "namespace": test.name}}, "Nodes": null, "NodeNames": [interrupted]});
    wait_for(
        "extender sees the interruption",
        Duration::from_secs(30),
        || async {
            let body: serde_json::Value = http
                .post(format!("{}/filter", extender.url()))
                .json(&probe)
                .send()
                .await?
                .json()
                .await?;
            Ok(body["FailedNodes"].get(&interrupted).map(|_| ()))
        },
    )
    .await?;

    let before: BTreeSet<String> = placed.keys().cloned().collect();
    Api::<Deployment>::namespaced(client.clone(), &test.name)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 12}})),
        )
        .await?;
    let placed = scheduled_pods(&client, &test.name, 12).await?;
    let remaining: BTreeSet<&String> = ranked
        .iter()
        .copied()
        .filter(|n| **n != interrupted)
        .collect();
    for (pod, node) in placed.iter().filter(|(pod, _)| !before.contains(*pod)) {
        anyhow::ensure!(
            node != &interrupted,
            "new pod {pod} landed on the interrupted node {node}"
        );
        anyhow::ensure!(
            remaining.contains(node),
            "new pod {pod} landed on {node}, not on a remaining rank-1 node {remaining:?}"
        );
    }
    Ok(())
}

fn set_scheduler(deployment: &mut Deployment) {
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    {
        spec.scheduler_name = Some(SCHEDULER.into());
    }
}

/// Waits until `count` pods are bound; returns pod → node.
async fn scheduled_pods(
    client: &kube::Client,
    namespace: &str,
    count: usize,
) -> anyhow::Result<BTreeMap<String, String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(wait_for(
        &format!("{count} pods scheduled"),
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let bound: BTreeMap<String, String> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| {
                    Some((
                        p.metadata.name.clone()?,
                        p.spec.as_ref()?.node_name.clone()?,
                    ))
                })
                .collect();
            Ok((bound.len() == count).then_some(bound))
        },
    )
    .await?)
}

/// `nodeCacheCapable: false` (full Node objects in every call) with the real scheduler,
/// and a ranking change picked up from the ConfigMap watch: new pods follow the new
/// rank 1.
#[tokio::test]
async fn full_object_mode_follows_a_ranking_update() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("extender-full").await?;
    test.report(full_object_scenario(cluster, &test).await)
}

async fn full_object_scenario(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    const FULL_SCHEDULER: &str = "spotkube-scheduler-full";
    let client = test.client.clone();
    let pool = test.name.clone();
    let mut by_type: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for zone in ZONES {
        for instance_type in ["c7g.4xlarge", "m7g.large"] {
            let node = FakeNode::spot(instance_type, zone)
                .with_label("spotkube.test/pool", &pool)
                .create(&client)
                .await?;
            by_type
                .entry(instance_type)
                .or_default()
                .insert(node.metadata.name.unwrap());
        }
    }
    wait_for_schedulable_nodes(
        &client,
        &format!("spotkube.test/pool={pool}"),
        6,
        Duration::from_secs(60),
    )
    .await?;
    let ranking_text = snapshot_ranking().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &test.name);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "spotkube-ranking"},
            "data": {"ranking.json": ranking_text},
        }))?,
    )
    .await?;
    let extender = cluster
        .start_extender(ProgramOptions {
            args: vec![format!(
                "--ranking-configmap={}/spotkube-ranking",
                test.name
            )],
            ..Default::default()
        })
        .await?;
    extender
        .wait_for_metric(
            "spotkube_extender_ranking_loaded 1",
            Duration::from_secs(30),
        )
        .await?;
    let mut config = ExtenderConfig::shipped(extender.url());
    config.weight = 5;
    config.node_cache_capable = false;
    let _scheduler = cluster.start_scheduler(FULL_SCHEDULER, &[config]).await?;

    let mut deployment =
        workloads::with_node_selector(workloads::deployment("web", 3), "spotkube.test/pool", &pool);
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    {
        spec.scheduler_name = Some(FULL_SCHEDULER.into());
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &test.name);
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let placed = scheduled_pods(&client, &test.name, 3).await?;
    for (pod, node) in &placed {
        anyhow::ensure!(
            by_type["c7g.4xlarge"].contains(node),
            "pod {pod} landed on {node}, not on a c7g.4xlarge (rank 1)"
        );
    }
    let extender_prioritize = extender
        .metrics()
        .await?
        .lines()
        .any(|l| l.starts_with("spotkube_extender_request_nodes_count{verb=\"prioritize\"}"));
    anyhow::ensure!(extender_prioritize, "the scheduler called prioritize");

    // m7g.large becomes rank 1 everywhere (the controller would publish this when its
    // price drops); the extender's ConfigMap watch picks it up.
    let mut ranking = Ranking::from_json(&ranking_text)?;
    for entries in ranking.zones.values_mut() {
        let at = entries
            .iter()
            .position(|e| e.instance_type == "m7g.large")
            .expect("m7g.large is ranked");
        let entry = entries.remove(at);
        entries.insert(0, entry);
        for (i, e) in entries.iter_mut().enumerate() {
            e.rank = i as u32 + 1;
        }
    }
    cms.patch(
        "spotkube-ranking",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ranking.json": ranking.to_json()}})),
    )
    .await?;
    let http = reqwest::Client::new();
    let m7g = by_type["m7g.large"].iter().next().unwrap().clone();
    let probe = json!({"Pod": {"metadata": {"name": "probe"}}, "Nodes": null, "NodeNames": [m7g]});
    wait_for(
        "extender sees the new ranking",
        Duration::from_secs(30),
        || async {
            let body: serde_json::Value = http
                .post(format!("{}/prioritize", extender.url()))
                .json(&probe)
                .send()
                .await?
                .json()
                .await?;
            Ok((body[0]["Score"] == json!(10)).then_some(()))
        },
    )
    .await?;

    let before: BTreeSet<String> = placed.keys().cloned().collect();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await?;
    let placed = scheduled_pods(&client, &test.name, 6).await?;
    for (pod, node) in placed.iter().filter(|(pod, _)| !before.contains(*pod)) {
        anyhow::ensure!(
            by_type["m7g.large"].contains(node),
            "new pod {pod} landed on {node}, not on an m7g.large (the new rank 1)"
        );
    }
    Ok(())
}

/// The scheduler's `enableHTTPS` with `tlsConfig.caFile`: the extender serves its API
/// over TLS from a cluster-CA-signed certificate (reloading, its expiry on `/metrics`),
/// and a non-ignorable extender entry schedules every pod through it.
#[tokio::test]
async fn scheduler_calls_the_extender_over_tls() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("extender-tls").await?;
    test.report(tls_scenario(cluster, &test).await)
}

async fn tls_scenario(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    const TLS_SCHEDULER: &str = "spotkube-scheduler-tls";
    let client = test.client.clone();
    let pool = test.name.clone();
    for zone in ZONES {
        FakeNode::spot("m7g.large", zone)
            .with_label("spotkube.test/pool", &pool)
            .create(&client)
            .await?;
    }
    wait_for_schedulable_nodes(
        &client,
        &format!("spotkube.test/pool={pool}"),
        3,
        Duration::from_secs(60),
    )
    .await?;
    let extender = cluster
        .start_extender(ProgramOptions {
            tls: true,
            ..Default::default()
        })
        .await?;
    anyhow::ensure!(extender.url().starts_with("https://"), "{}", extender.url());
    let metrics = extender.metrics().await?;
    anyhow::ensure!(
        metrics.contains("spotkube_extender_tls_certificate_expiry_seconds ")
            && metrics.contains("spotkube_extender_tls_certificate_reload_failures_total 0"),
        "certificate metrics exported:\n{metrics}"
    );

    let mut config = ExtenderConfig::shipped(extender.url());
    config.ca_file = Some(cluster.pki.ca.files.cert.clone());
    config.ignorable = false;
    let _scheduler = cluster.start_scheduler(TLS_SCHEDULER, &[config]).await?;

    let mut deployment =
        workloads::with_node_selector(workloads::deployment("web", 3), "spotkube.test/pool", &pool);
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    {
        spec.scheduler_name = Some(TLS_SCHEDULER.into());
    }
    Api::<Deployment>::namespaced(client.clone(), &test.name)
        .create(&PostParams::default(), &deployment)
        .await?;
    scheduled_pods(&client, &test.name, 3).await?;
    let calls: f64 = extender
        .metrics()
        .await?
        .lines()
        .filter(|l| {
            l.starts_with("spotkube_extender_request_duration_seconds_count")
                && l.contains("verb=\"filter\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    anyhow::ensure!(calls >= 3.0, "filter calls over TLS: {calls}");
    Ok(())
}
