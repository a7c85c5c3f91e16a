//! `make demo`: the whole spotkube story on the embedded default, on 127.0.0.1 only.
//!
//! A real control plane with kwok nodes backed by moto EC2 instances (spot and on-demand,
//! three AZs), moto for SQS / EC2 / Pricing, and spotkube's three programs as local
//! processes. An opted-in namespace gets a single-replica `web` and a PDB-protected
//! three-replica `api`; the webhook and the extender put them on the cheapest ranked spot
//! nodes; then a spot interruption warning for `web`'s node goes through SQS, and the demo
//! prints the timeline up to the old node's death with the minimum number of ready
//! endpoints each Service had meanwhile, and what the workloads cost (`spotkube-controller
//! savings`) before and after. Exits non-zero if a Service ever went dark.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde_json::json;
use spotkube_rig::aws::{EventKind, Moto};
use spotkube_rig::nodes::{Capacity, price_snapshot_path};
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{
    Cluster, ExtenderConfig, ZONES, wait_for, wait_for_rollout, wait_for_schedulable_nodes,
    workloads,
};
use spotkube_shared::ranking::Ranking;

const NAMESPACE: &str = "demo";
const SCHEDULER: &str = "spotkube-scheduler";
const INTERRUPTION: &str = "spotkube.io/interruption";
/// AWS gives two minutes; the demo's instance dies 30 s after the warning.
const DEADLINE: Duration = Duration::from_secs(30);
/// The PodDisruptionBudget of `api` (3 replicas).
const API_MIN_AVAILABLE: i32 = 2;
/// The spot fleet per AZ: the types the ranking puts first and last, plus a type it never
/// ranks and an on-demand node (the fallback capacity).
const FLEET: &[(&str, Capacity)] = &[
    ("c7g.4xlarge", Capacity::Spot),
    ("m7g.large", Capacity::Spot),
    ("t4g.large", Capacity::Spot),
    ("m7g.large", Capacity::OnDemand),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spotkube_shared::telemetry::install_crypto_provider();
    let started = Instant::now();
    let result = run().await;
    match &result {
        Ok(()) => println!(
            "\nspotkube demo finished in {:.0?}: no Service ever lost its last ready endpoint.",
            started.elapsed()
        ),
        Err(e) => eprintln!(
            "\nspotkube demo FAILED after {:.0?}: {e:#}",
            started.elapsed()
        ),
    }
    result
}

fn step(what: &str) {
    println!("\n==> {what}");
}

async fn run() -> anyhow::Result<()> {
    step(
        "Starting a control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok",
    );
    let cluster = Cluster::start().await?;
    println!(
        "    apiserver {} ready in {:.1?} (logs: {})",
        cluster.server,
        cluster.startup,
        cluster.log_dir.display()
    );
    let client = cluster.client().await?;

    step("Starting moto (EC2, SQS, Auto Scaling) with the Pricing stand-in and per-AZ spot prices");
    let moto = Moto::start_in(&cluster.log_dir).await?;
    let queues = moto.create_queue_with_dlq("spotkube-events", 3).await?;
    println!(
        "    {}  (EventBridge target, DLQ after 3 receives)",
        queues.url
    );

    step("Launching EC2 instances in moto and registering them as kwok Nodes");
    let mut fleet = Vec::new();
    for zone in ZONES {
        for (instance_type, capacity) in FLEET {
            let node = moto.launch_node(instance_type, zone, *capacity).await?;
            node.create(&client).await?;
            println!(
                "    {:<22} {:<12} {:<10} {}",
                node.name,
                instance_type,
                format!("{capacity:?}").to_lowercase(),
                zone
            );
            fleet.push((node, *instance_type));
        }
    }
    wait_for_schedulable_nodes(&client, "", fleet.len(), Duration::from_secs(60)).await?;

    for ns in ["spotkube-system", NAMESPACE] {
        let annotations = (ns == NAMESPACE)
            .then(|| BTreeMap::from([("spotkube.io/enabled".to_string(), "true".to_string())]));
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(ns.into()),
                        annotations,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("create namespace {ns}"))?;
    }

    step(
        "Starting spotkube-controller: SQS intake, leader election, ranking from EC2 + Pricing (moto)",
    );
    let controller_options = moto
        .controller_options(&queues.url, "spotkube-system")
        .arg("--publish-ranking")
        .arg("--source=aws")
        .arg("--region=us-east-1")
        .arg(format!(
            "--interruption-bands={}",
            price_snapshot_path().display()
        ))
        .arg("--scale-back-interval=2s");
    let _controller = cluster.start_controller(controller_options).await?;
    let ranking = published_ranking(&client).await?;
    for (zone, entries) in &ranking.zones {
        let top: Vec<String> = entries
            .iter()
            .take(3)
            .map(|e| format!("{} ${:.4}/h", e.instance_type, e.spot_usd_per_hour))
            .collect();
        println!("    {zone}: {}", top.join(", "));
    }

    step(
        "Starting spotkube-extender and a kube-scheduler whose profile spotkube-scheduler calls it",
    );
    let extender = cluster.start_extender(ProgramOptions::default()).await?;
    extender
        .wait_for_metric(
            "spotkube_extender_ranking_loaded 1",
            Duration::from_secs(30),
        )
        .await?;
    let _scheduler = cluster
        .start_scheduler(SCHEDULER, &[ExtenderConfig::shipped(extender.url())])
        .await?;

    step("Starting spotkube-webhook (TLS) and registering it with the apiserver");
    let webhook = cluster
        .start_webhook(ProgramOptions::default().arg(format!("--scheduler-name={SCHEDULER}")))
        .await?;
    cluster
        .register_webhook("spotkube-demo", &webhook, NAMESPACE)
        .await?;
    // The webhook selects namespaces by label; the controller mirrors the annotation.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for(
        "the controller to mirror the opt-in to a label",
        Duration::from_secs(30),
        || async {
            let ns = namespaces.get(NAMESPACE).await?;
            let labelled = ns
                .metadata
                .labels
                .is_some_and(|l| l.get("spotkube.io/enabled").map(String::as_str) == Some("true"));
            Ok(labelled.then_some(()))
        },
    )
    .await?;
    println!(
        "    {NAMESPACE}: spotkube.io/enabled annotation mirrored to a label by the controller"
    );

    step(
        "Deploying `web` (1 replica) and `api` (3 replicas, PDB minAvailable 2) into the opted-in namespace",
    );
    for (name, replicas) in [("web", 1), ("api", 3)] {
        workloads::create_with_service(&client, NAMESPACE, &workloads::deployment(name, replicas))
            .await?;
    }
    create_pdb(&client, "api", API_MIN_AVAILABLE).await?;
    for name in ["web", "api"] {
        wait_for_rollout(&client, NAMESPACE, name, Duration::from_secs(90)).await?;
    }
    let placement = pod_placement(&client).await?;
    let node_types: BTreeMap<&str, (&str, &str)> = fleet
        .iter()
        .map(|(n, instance_type)| (n.name.as_str(), (*instance_type, n.zone.as_str())))
        .collect();
    let spot: Vec<&str> = fleet
        .iter()
        .filter(|(n, _)| {
            matches!(
                n.kind,
                spotkube_rig::NodeKind::Ec2 {
                    capacity: Capacity::Spot,
                    ..
                }
            )
        })
        .map(|(n, _)| n.name.as_str())
        .collect();
    for (pod, node) in &placement {
        let (instance_type, zone) = node_types.get(node.as_str()).copied().unwrap_or(("?", "?"));
        let rank = ranking
            .rank_of(zone, instance_type)
            .map_or("unranked".to_string(), |r| format!("rank {r}"));
        println!("    {pod:<28} → {node} ({instance_type}, {zone}, {rank})");
    }
    check_rank_one(&placement, &node_types, &spot, &ranking)?;
    println!("    every pod is on a rank-1 spot node of its AZ");

    step("What the workloads cost now (`spotkube-controller savings --namespace demo`)");
    print_savings(&cluster, &moto).await?;
    let victim = placement
        .iter()
        .find(|(pod, _)| pod.starts_with("web-"))
        .map(|(_, node)| node.clone())
        .context("web has no pod")?;
    let victim_instance = fleet
        .iter()
        .find(|(n, _)| n.name == victim)
        .map(|(n, _)| n.instance_id.clone())
        .context("web's node is not one of the demo's")?;

    step(&format!(
        "Spot interruption warning for {victim_instance} ({victim}) through SQS; the instance dies {DEADLINE:?} later (seconds after the event)"
    ));
    let timeline = Timeline::start();
    let watch = Watch::start(client.clone(), victim.clone(), timeline.clone());
    moto.send_event(
        &queues.url,
        EventKind::SpotInterruptionWarning,
        &victim_instance,
        jiff::Timestamp::now(),
    )
    .await?;
    timeline.mark("event put on the SQS queue");
    tokio::time::sleep(DEADLINE).await;
    watch.instance_dies();
    kill_node(&client, &victim).await?;
    timeline.mark(&format!(
        "instance terminated: its pods and Node {victim} are gone"
    ));
    for name in ["web", "api"] {
        wait_for_rollout(&client, NAMESPACE, name, Duration::from_secs(60)).await?;
    }
    wait_for("the queue drains", Duration::from_secs(30), || async {
        Ok((moto.queue_depth(&queues.url).await? == 0).then_some(()))
    })
    .await?;
    timeline.mark("all workloads Ready on the remaining nodes; queue empty");
    let observed = watch.finish().await;
    let minimum = observed.minimum;
    check_pdb_respected(
        observed.api_drained,
        minimum.get("api").copied(),
        API_MIN_AVAILABLE,
    )?;
    println!(
        "    PDB respected: `api` left {victim} before it died and never had fewer than {API_MIN_AVAILABLE} ready endpoints"
    );

    step("What the workloads cost after the interruption");
    print_savings(&cluster, &moto).await?;

    step("Minimum ready endpoints per Service during the interruption (polled every 100 ms)");
    let mut dark = Vec::new();
    for (service, min) in &minimum {
        println!("    {service:<6} {min}");
        if *min == 0 {
            dark.push(service.clone());
        }
    }
    anyhow::ensure!(
        dark.is_empty(),
        "Services with zero ready endpoints at some moment: {dark:?}"
    );
    Ok(())
}

/// Prints `spotkube-controller savings` for the demo namespace: per workload, where its
/// pods run, $/hour now, the on-demand equivalent and the savings, from moto's prices.
async fn print_savings(cluster: &Cluster, moto: &Moto) -> anyhow::Result<()> {
    let binary = spotkube_rig::tools::program_binary("spotkube-controller");
    let output = tokio::process::Command::new(&binary)
        .args(["savings", "--source=aws", "--region=us-east-1"])
        .arg(format!("--namespace={NAMESPACE}"))
        .arg(format!(
            "--interruption-bands={}",
            price_snapshot_path().display()
        ))
        .envs(moto.env())
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {}", binary.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "spotkube-controller savings failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("    {line}");
    }
    Ok(())
}

/// Waits for the leader to publish the ranking ConfigMap and decodes it.
async fn published_ranking(client: &kube::Client) -> anyhow::Result<Ranking> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "spotkube-system");
    let text = wait_for("the ranking ConfigMap", Duration::from_secs(60), || async {
        Ok(cms
            .get_opt("spotkube-ranking")
            .await?
            .and_then(|cm| cm.data)
            .and_then(|mut data| data.remove("ranking.json")))
    })
    .await?;
    Ranking::from_json(&text).context("decode the published ranking")
}

async fn create_pdb(client: &kube::Client, app: &str, min_available: i32) -> anyhow::Result<()> {
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": app},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }))?;
    Api::<PodDisruptionBudget>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &pdb)
        .await?;
    Ok(())
}

/// Pod name → node name, for every pod of the demo namespace.
async fn pod_placement(client: &kube::Client) -> anyhow::Result<BTreeMap<String, String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await?;
    Ok(pods
        .into_iter()
        .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
        .collect())
}

/// What the dying instance does: its pods vanish at once, then its Node.
async fn kill_node(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    for pod in on_node {
        let name = pod.metadata.name.unwrap_or_default();
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await?;
    }
    Api::<Node>::all(client.clone())
        .delete(node, &DeleteParams::default())
        .await?;
    Ok(())
}

/// Timestamped milestones, printed once, as they happen.
#[derive(Clone)]
struct Timeline {
    origin: Instant,
    marks: Arc<Mutex<Vec<(Duration, String)>>>,
}

impl Timeline {
    fn start() -> Self {
        Self {
            origin: Instant::now(),
            marks: Arc::default(),
        }
    }

    fn mark(&self, what: &str) {
        // Under the lock: the watch task marks concurrently, and lines stay in order.
        let mut marks = self.marks.lock().expect("timeline");
        let at = self.origin.elapsed();
        println!("    +{:>6.2}s  {what}", at.as_secs_f64());
        marks.push((at, what.to_string()));
    }
}

/// Polls every 100 ms: the victim node's taint, the Services' ready endpoints (keeping
/// each minimum), and the first Ready `web` endpoint on another node.
struct Watch {
    stop: tokio::sync::watch::Sender<bool>,
    /// Set when the instance dies: `api` leaving the node after that is no drain.
    dead: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Observed>,
}

/// What the watch saw during the interruption.
#[derive(Default)]
struct Observed {
    /// Each Service's fewest ready endpoints.
    minimum: BTreeMap<String, usize>,
    /// `api` had no pod left on the victim while the instance still ran.
    api_drained: bool,
}

impl Watch {
    fn start(client: kube::Client, victim: String, timeline: Timeline) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let instance_dead = dead.clone();
        let task = tokio::spawn(async move {
            let nodes: Api<Node> = Api::all(client.clone());
            let slices: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
            let mut minimum: BTreeMap<String, usize> = BTreeMap::new();
            let (mut tainted, mut cordoned, mut replaced, mut evicted) =
                (false, false, false, false);
            while !*stopped.borrow() {
                if let Ok(Some(node)) = nodes.get_opt(&victim).await {
                    let spec = node.spec.unwrap_or_default();
                    if !tainted
                        && spec
                            .taints
                            .unwrap_or_default()
                            .iter()
                            .any(|t| t.key == INTERRUPTION && t.effect == "NoSchedule")
                    {
                        tainted = true;
                        timeline.mark(&format!("{victim} tainted {INTERRUPTION}:NoSchedule"));
                    }
                    if !cordoned && spec.unschedulable == Some(true) {
                        cordoned = true;
                        timeline.mark(&format!("{victim} cordoned"));
                    }
                }
                if let Ok(list) = slices.list(&ListParams::default()).await {
                    let mut ready: BTreeMap<String, usize> = BTreeMap::new();
                    let mut api_on_victim = 0;
                    for slice in list {
                        let service = slice
                            .metadata
                            .labels
                            .unwrap_or_default()
                            .remove("kubernetes.io/service-name")
                            .unwrap_or_default();
                        for endpoint in slice.endpoints.into_iter().flatten() {
                            let is_ready = endpoint
                                .conditions
                                .as_ref()
                                .and_then(|c| c.ready)
                                .unwrap_or(false);
                            if !is_ready {
                                continue;
                            }
                            *ready.entry(service.clone()).or_default() += 1;
                            if service == "api"
                                && endpoint.node_name.as_deref() == Some(victim.as_str())
                            {
                                api_on_victim += 1;
                            }
                            if !replaced
                                && service == "web"
                                && endpoint.node_name.as_deref() != Some(victim.as_str())
                            {
                                replaced = true;
                                timeline.mark(&format!(
                                    "replacement `web` pod Ready on {}",
                                    endpoint.node_name.unwrap_or_default()
                                ));
                            }
                        }
                    }
                    if tainted
                        && !evicted
                        && api_on_victim == 0
                        && !instance_dead.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        evicted = true;
                        timeline.mark(&format!(
                            "`api` has no pod left on {victim} (Eviction API); {} ready elsewhere",
                            ready.get("api").copied().unwrap_or(0)
                        ));
                    }
                    for service in ["web", "api"] {
                        let now = ready.get(service).copied().unwrap_or(0);
                        let min = minimum.entry(service.to_string()).or_insert(now);
                        *min = (*min).min(now);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => {}
                }
            }
            Observed {
                minimum,
                api_drained: evicted,
            }
        });
        Self { stop, dead, task }
    }

    fn instance_dies(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    async fn finish(self) -> Observed {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// "The webhook and the extender put them on the rank-1 spot nodes": every pod is on a
/// spot node whose instance type ranks first in the node's AZ.
fn check_rank_one(
    placement: &BTreeMap<String, String>,
    node_types: &BTreeMap<&str, (&str, &str)>,
    spot: &[&str],
    ranking: &Ranking,
) -> anyhow::Result<()> {
    anyhow::ensure!(!placement.is_empty(), "no pod placed");
    let misplaced: Vec<String> = placement
        .iter()
        .filter(|(_, node)| {
            let rank_one = node_types
                .get(node.as_str())
                .is_some_and(|(t, zone)| ranking.rank_of(zone, t) == Some(1));
            !(rank_one && spot.contains(&node.as_str()))
        })
        .map(|(pod, node)| format!("{pod} on {node}"))
        .collect();
    anyhow::ensure!(
        misplaced.is_empty(),
        "pods not on a rank-1 spot node: {misplaced:?}"
    );
    Ok(())
}

/// "PDB respected": `api` left the node before the instance died, through evictions
/// that never took it below the budget's `minAvailable` ready endpoints.
fn check_pdb_respected(
    drained: bool,
    fewest_ready: Option<usize>,
    min_available: i32,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        drained,
        "`api` still had a pod on the node when the instance died"
    );
    let fewest = fewest_ready.unwrap_or(0);
    anyhow::ensure!(
        fewest >= min_available as usize,
        "`api` fell to {fewest} ready endpoints, below its PDB's minAvailable {min_available}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(rank: u32, instance_type: &str) -> spotkube_shared::ranking::RankedType {
        spotkube_shared::ranking::RankedType {
            rank,
            instance_type: instance_type.into(),
            spot_usd_per_hour: 0.1,
            on_demand_usd_per_hour: 0.5,
            savings_percent: 80.0,
            vcpu: 2,
            memory_gib: 8.0,
            interruption_band: None,
            score: 0.05,
        }
    }

    fn ranking() -> Ranking {
        Ranking {
            schema_version: spotkube_shared::ranking::SCHEMA_VERSION.into(),
            computed_at: jiff::Timestamp::UNIX_EPOCH,
            source: "test".into(),
            region: None,
            criteria: None,
            zones: BTreeMap::from([(
                "us-east-1a".to_string(),
                vec![ranked(1, "c7g.4xlarge"), ranked(2, "m7g.large")],
            )]),
            unavailable: Vec::new(),
        }
    }

    #[test]
    fn a_pod_off_a_rank_one_spot_node_fails_the_demo() {
        let node_types = BTreeMap::from([
            ("spot-c7g", ("c7g.4xlarge", "us-east-1a")),
            ("spot-m7g", ("m7g.large", "us-east-1a")),
            ("od-c7g", ("c7g.4xlarge", "us-east-1a")),
        ]);
        let spot = ["spot-c7g", "spot-m7g"];
        let on = |node: &str| BTreeMap::from([("web-1".to_string(), node.to_string())]);
        let ranking = ranking();
        assert!(check_rank_one(&on("spot-c7g"), &node_types, &spot, &ranking).is_ok());
        let rank_two = check_rank_one(&on("spot-m7g"), &node_types, &spot, &ranking);
        assert!(
            rank_two
                .unwrap_err()
                .to_string()
                .contains("web-1 on spot-m7g")
        );
        assert!(check_rank_one(&on("od-c7g"), &node_types, &spot, &ranking).is_err());
        assert!(check_rank_one(&BTreeMap::new(), &node_types, &spot, &ranking).is_err());
    }

    #[test]
    fn the_pdb_claim_needs_a_drain_before_the_death_and_never_fewer_than_min_available() {
        assert!(check_pdb_respected(true, Some(2), 2).is_ok());
        assert!(check_pdb_respected(true, Some(3), 2).is_ok());
        let below = check_pdb_respected(true, Some(1), 2).unwrap_err();
        assert!(below.to_string().contains("fell to 1"), "{below}");
        assert!(check_pdb_respected(false, Some(3), 2).is_err());
        assert!(check_pdb_respected(true, None, 2).is_err());
    }
}
