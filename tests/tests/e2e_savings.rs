//! Realised savings on the rig: workloads on spot (ranked and unranked), on-demand,
//! Fargate and a node of unknown capacity, priced from moto's seeded spot prices and
//! the Pricing stand-in. The controller (running with the shipped RBAC, so its watches
//! are proven allowed) exports the figures the test computes by hand on `/metrics`, and
//! `spotkube-controller savings` prints the same ones.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, PostParams};
use serde_json::Value;
use spotkube_rig::aws::Moto;
use spotkube_rig::identity::controller_kubeconfig;
use spotkube_rig::tools::program_binary;
use spotkube_rig::{Cluster, FakeNode, TestNamespace, wait_for, wait_for_rollout, workloads};

/// Spot prices seeded in moto (newer than its own), $/hour.
const C7G_4XLARGE_SPOT_1A: f64 = 0.16;
const T4G_LARGE_SPOT_1C: f64 = 0.02;
/// On-demand prices of the Pricing stand-in (the price snapshot's).
const C7G_4XLARGE_OD: f64 = 0.58;
const M7G_LARGE_OD: f64 = 0.0816;
const T4G_LARGE_OD: f64 = 0.0672;
/// Fargate's default rates (us-east-1).
const FARGATE_VCPU_HOUR: f64 = 0.04048;
const FARGATE_GB_HOUR: f64 = 0.004445;

#[tokio::test]
async fn savings_per_workload_match_the_seeded_prices_on_metrics_and_in_the_cli()
-> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("savings", &[("spotkube.io/enabled", "true")])
        .await?;
    test.report(scenario(cluster, &test).await)
}

/// A Node with round allocatable CPU (the fake's keeps some back), optionally stripped
/// of its capacity type labels.
async fn node(
    client: &kube::Client,
    fake: FakeNode,
    cpu: &str,
    unknown: bool,
) -> anyhow::Result<String> {
    let mut node = fake.to_node()?;
    if let Some(status) = node.status.as_mut() {
        status
            .allocatable
            .get_or_insert_with(BTreeMap::new)
            .insert("cpu".into(), Quantity(cpu.into()));
    }
    if unknown {
        let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.remove("karpenter.sh/capacity-type");
        labels.remove("eks.amazonaws.com/capacityType");
    }
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await?;
    Ok(fake.name)
}

/// A Deployment of `replicas` pods requesting `cpu` and `memory`, pinned to `node`.
fn pinned(name: &str, replicas: i32, node: &str, cpu: &str, memory: &str) -> Deployment {
    let mut d = workloads::with_node_selector(
        workloads::deployment(name, replicas),
        "kubernetes.io/hostname",
        node,
    );
    let spec = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .expect("a pod template");
    let requests = spec.containers[0]
        .resources
        .get_or_insert_with(Default::default)
        .requests
        .get_or_insert_with(BTreeMap::new);
    requests.insert("cpu".into(), Quantity(cpu.into()));
    requests.insert("memory".into(), Quantity(memory.into()));
    spec.tolerations = Some(vec![Toleration {
        key: Some("eks.amazonaws.com/compute-type".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }]);
    d
}

async fn deploy(client: &kube::Client, ns: &str, d: &Deployment) -> anyhow::Result<()> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), d)
        .await?;
    Ok(())
}

/// What one workload should show: cost by capacity, on-demand equivalent, pods,
/// unpriced pods and where they run.
struct Want {
    workload: &'static str,
    cost: Vec<(&'static str, f64)>,
    on_demand: f64,
    pods: u64,
    unpriced: u64,
    placement: &'static str,
}

fn expected() -> Vec<Want> {
    let fargate = FARGATE_VCPU_HOUR + 2.0 * FARGATE_GB_HOUR;
    vec![
        // 2 pods × (2 of 16 vCPU) of a rank-1 spot c7g.4xlarge.
        Want {
            workload: "deployment/web",
            cost: vec![("spot", 2.0 * 2.0 / 16.0 * C7G_4XLARGE_SPOT_1A)],
            on_demand: 2.0 * 2.0 / 16.0 * C7G_4XLARGE_OD,
            pods: 2,
            unpriced: 0,
            placement: "spot-rank-1:2",
        },
        // 1 of 2 vCPU of an on-demand m7g.large: it saves nothing.
        Want {
            workload: "deployment/api",
            cost: vec![("on-demand", 0.5 * M7G_LARGE_OD)],
            on_demand: 0.5 * M7G_LARGE_OD,
            pods: 1,
            unpriced: 0,
            placement: "on-demand:1",
        },
        // 0.5 of 2 vCPU of a spot t4g.large: burstable, never ranked, its spot price
        // asked for on its own.
        Want {
            workload: "deployment/batch",
            cost: vec![("spot", 0.25 * T4G_LARGE_SPOT_1C)],
            on_demand: 0.25 * T4G_LARGE_OD,
            pods: 1,
            unpriced: 0,
            placement: "spot-unranked:1",
        },
        // Fargate: 1 vCPU and 2 GiB at Fargate's rates, its own on-demand equivalent.
        Want {
            workload: "deployment/fg",
            cost: vec![("fargate", fargate)],
            on_demand: fargate,
            pods: 1,
            unpriced: 0,
            placement: "fargate:1",
        },
        // A node without a capacity type: counted, never priced.
        Want {
            workload: "deployment/odd",
            cost: vec![],
            on_demand: 0.0,
            pods: 1,
            unpriced: 1,
            placement: "unknown:1",
        },
    ]
}

const EPS: f64 = 1e-9;

/// `name{labels} value` lines of a scrape, keyed by everything before the value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// What `/metrics` should say, series → value.
fn expected_metrics(ns: &str) -> BTreeMap<String, f64> {
    let mut want = BTreeMap::new();
    let mut by_capacity: BTreeMap<&str, f64> = BTreeMap::new();
    let mut on_demand = 0.0;
    for w in expected() {
        for (capacity, usd) in &w.cost {
            want.insert(
                format!(
                    r#"spotkube_workload_cost_usd_per_hour{{namespace="{ns}",workload="{}",capacity="{capacity}"}}"#,
                    w.workload
                ),
                *usd,
            );
            *by_capacity.entry(capacity).or_default() += usd;
        }
        want.insert(
            format!(
                r#"spotkube_workload_on_demand_equivalent_usd_per_hour{{namespace="{ns}",workload="{}"}}"#,
                w.workload
            ),
            w.on_demand,
        );
        on_demand += w.on_demand;
    }
    for (capacity, usd) in by_capacity {
        want.insert(
            format!(r#"spotkube_cluster_cost_usd_per_hour{{capacity="{capacity}"}}"#),
            usd,
        );
    }
    want.insert(
        "spotkube_cluster_on_demand_equivalent_usd_per_hour".into(),
        on_demand,
    );
    // 2 of the 6 pods run on a rank-1 spot type of their AZ.
    want.insert(
        "spotkube_opted_in_pods_on_top_ranked_ratio".into(),
        2.0 / 6.0,
    );
    want.insert("spotkube_opted_in_pods_unpriced".into(), 1.0);
    for (placement, pods) in [
        ("spot-rank-1", 2.0),
        ("spot-unranked", 1.0),
        ("on-demand", 1.0),
        ("fargate", 1.0),
        ("unknown", 1.0),
    ] {
        want.insert(
            format!(r#"spotkube_opted_in_pods{{placement="{placement}"}}"#),
            pods,
        );
    }
    want
}

/// The differences between `want` and the savings series of `got` (empty: equal). Any
/// savings series `want` does not name is a difference too.
fn differences(want: &BTreeMap<String, f64>, got: &BTreeMap<String, f64>) -> Vec<String> {
    let mut out = Vec::new();
    for (series, value) in want {
        match got.get(series) {
            Some(v) if (v - value).abs() < EPS => {}
            other => out.push(format!("{series}: want {value}, got {other:?}")),
        }
    }
    let ours = [
        "spotkube_workload_",
        "spotkube_cluster_",
        "spotkube_opted_in_pods",
    ];
    for series in got.keys() {
        if ours.iter().any(|p| series.starts_with(p)) && !want.contains_key(series) {
            out.push(format!("unexpected {series} = {}", got[series]));
        }
    }
    out
}

async fn scenario(cluster: &'static Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let client = &test.client;
    let moto = Moto::start().await?;
    moto.seed_spot_price("c7g.4xlarge", "us-east-1a", C7G_4XLARGE_SPOT_1A)
        .await?;
    moto.seed_spot_price("t4g.large", "us-east-1c", T4G_LARGE_SPOT_1C)
        .await?;
    let queues = moto.create_queue_with_dlq(&test.name, 3).await?;

    let spot = node(
        client,
        FakeNode::spot("c7g.4xlarge", "us-east-1a"),
        "16",
        false,
    )
    .await?;
    let od = node(
        client,
        FakeNode::on_demand("m7g.large", "us-east-1b"),
        "2",
        false,
    )
    .await?;
    let burst = node(
        client,
        FakeNode::spot("t4g.large", "us-east-1c"),
        "2",
        false,
    )
    .await?;
    let fargate = node(client, FakeNode::fargate("us-east-1c"), "2", false).await?;
    let odd = node(
        client,
        FakeNode::on_demand("m7g.large", "us-east-1a"),
        "2",
        true,
    )
    .await?;

    let ns = test.name.as_str();
    for d in [
        pinned("web", 2, &spot, "2", "64Mi"),
        pinned("api", 1, &od, "1", "64Mi"),
        pinned("batch", 1, &burst, "500m", "64Mi"),
        pinned("fg", 1, &fargate, "1", "2Gi"),
        pinned("odd", 1, &odd, "1", "64Mi"),
    ] {
        deploy(client, ns, &d).await?;
    }
    // Opted out by its pod template: never counted.
    let mut opted_out = pinned("opted-out", 1, &spot, "4", "64Mi");
    if let Some(spec) = opted_out.spec.as_mut() {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations = Some(BTreeMap::from([(
            "spotkube.io/enabled".to_string(),
            "false".to_string(),
        )]));
    }
    deploy(client, ns, &opted_out).await?;
    // A namespace that never opted in, on the same spot node: never counted.
    let plain = cluster.namespace("savings-plain").await?;
    deploy(client, &plain.name, &pinned("other", 1, &spot, "4", "64Mi")).await?;
    for name in ["web", "api", "batch", "fg", "odd", "opted-out"] {
        wait_for_rollout(client, ns, name, Duration::from_secs(60)).await?;
    }
    wait_for_rollout(client, &plain.name, "other", Duration::from_secs(60)).await?;

    // The shipped RBAC, unedited: the savings loop's watches need nothing more.
    let kubeconfig = controller_kubeconfig(cluster, client, ns, |_| {}).await?;
    let controller = cluster
        .start_controller(
            moto.controller_options(&queues.url, ns)
                .env("KUBECONFIG", kubeconfig.display().to_string())
                .arg("--publish-ranking")
                .arg("--source=aws")
                .arg("--region=us-east-1")
                .arg("--savings-interval=1s"),
        )
        .await?;

    let want = expected_metrics(ns);
    let settled = wait_for(
        "the savings metrics to show the seeded prices",
        Duration::from_secs(60),
        || async {
            let got = samples(&controller.metrics().await?);
            Ok(differences(&want, &got).is_empty().then_some(()))
        },
    )
    .await;
    if settled.is_err() {
        let got = samples(&controller.metrics().await?);
        panic!(
            "savings metrics differ:\n{}",
            differences(&want, &got).join("\n")
        );
    }

    // The CLI: the same figures, from one LIST and the same price source.
    let report = savings_cli(
        cluster,
        &moto,
        &["--output=json", &format!("--namespace={ns}")],
    )
    .await?;
    let report: Value = serde_json::from_str(&report)?;
    let rows = report["workloads"].as_array().cloned().unwrap_or_default();
    let expected = expected();
    assert_eq!(
        rows.iter()
            .map(|r| r["workload"].as_str().unwrap_or_default().to_string())
            .collect::<std::collections::BTreeSet<_>>(),
        expected.iter().map(|w| w.workload.to_string()).collect(),
        "{report:#}"
    );
    for w in &expected {
        let row = rows
            .iter()
            .find(|r| r["workload"] == w.workload)
            .expect("listed above");
        assert_eq!(row["namespace"], ns);
        assert_eq!(row["pods"].as_u64(), Some(w.pods), "{row}");
        assert_eq!(row["pods_unpriced"].as_u64(), Some(w.unpriced), "{row}");
        let placement: Vec<String> = row["placement"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}:{}",
                    p["placement"].as_str().unwrap_or_default(),
                    p["pods"]
                )
            })
            .collect();
        assert_eq!(placement.join(", "), w.placement, "{row}");
        let cost = row["cost_usd_per_hour"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(cost.len(), w.cost.len(), "{row}");
        for (capacity, usd) in &w.cost {
            let got = cost[*capacity].as_f64().unwrap_or(f64::NAN);
            assert!(
                (got - usd).abs() < EPS,
                "{} {capacity}: {got} != {usd}",
                w.workload
            );
        }
        let od = row["on_demand_equivalent_usd_per_hour"]
            .as_f64()
            .unwrap_or(f64::NAN);
        assert!(
            (od - w.on_demand).abs() < EPS,
            "{}: {od} != {}",
            w.workload,
            w.on_demand
        );
        let savings = row["savings_percent"].as_f64();
        if w.cost.is_empty() {
            assert_eq!(savings, None, "{row}");
        } else {
            let total: f64 = w.cost.iter().map(|(_, usd)| usd).sum();
            let want = (1.0 - total / w.on_demand) * 100.0;
            assert!((savings.unwrap_or(f64::NAN) - want).abs() < 1e-6, "{row}");
        }
    }
    assert_eq!(report["totals"]["pods"].as_u64(), Some(6));
    let ratio = report["totals"]["on_top_ranked_ratio"]
        .as_f64()
        .unwrap_or(f64::NAN);
    assert!((ratio - 2.0 / 6.0).abs() < EPS);

    // The table a person reads: web on rank 1 at 72.4 % savings.
    let table = savings_cli(cluster, &moto, &[&format!("--namespace={ns}")]).await?;
    let web = table
        .lines()
        .find(|l| l.contains("deployment/web"))
        .unwrap_or_else(|| panic!("no web row in\n{table}"));
    for cell in ["spot-rank-1:2", "0.04000", "0.14500", "72.4%"] {
        assert!(web.contains(cell), "{cell} in {web}");
    }
    drop(controller);
    Ok(())
}

/// Runs `spotkube-controller savings` against the rig and moto, as the admin.
async fn savings_cli(cluster: &Cluster, moto: &Moto, args: &[&str]) -> anyhow::Result<String> {
    let binary = program_binary("spotkube-controller");
    let output = tokio::process::Command::new(&binary)
        .args(["savings", "--source=aws", "--region=us-east-1"])
        .args(args)
        .envs(moto.env())
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "savings failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}
