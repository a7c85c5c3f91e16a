//! `make demo`: the whole spotkube story on the embedded default, on 127.0.0.1 only.
//!
//! A real control plane with kwok nodes backed by moto EC2 instances (spot and on-demand,
//! three AZs), moto for SQS / EC2 / Pricing, and spotkube's three programs as local
//! processes. An opted-in namespace gets a single-replica `web` and a PDB-protected
//! three-replica `api`; the webhook and the extender put them on the cheapest ranked spot
//! nodes; then a spot interruption warning for `web`'s node goes through SQS, and the demo
//! prints the timeline up to the old node's death with the minimum number of ready
//! endpoints each Service had meanwhile. Exits non-zero if a Service ever went dark.

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
        .start_scheduler(SCHEDULER, &[ExtenderConfig::spotkube(extender.url())])
        .await?;

    step("Starting spotkube-webhook (TLS) and registering it with the apiserver");
    let webhook = cluster
        .start_webhook(ProgramOptions::default().arg(format!("--scheduler-name={SCHEDULER}")))
        .await?;
    cluster
        .register_webhook("spotkube-demo", &webhook, NAMESPACE)
        .await?;

    step(
        "Deploying `web` (1 replica) and `api` (3 replicas, PDB minAvailable 2) into the opted-in namespace",
    );
    for (name, replicas) in [("web", 1), ("api", 3)] {
        workloads::create_with_service(&client, NAMESPACE, &workloads::deployment(name, replicas))
            .await?;
    }
    create_pdb(&client, "api", 2).await?;
    for name in ["web", "api"] {
        wait_for_rollout(&client, NAMESPACE, name, Duration::from_secs(90)).await?;
    }
    let placement = pod_placement(&client).await?;
    let node_types: BTreeMap<&str, (&str, &str)> = fleet
        .iter()
        .map(|(n, instance_type)| (n.name.as_str(), (*instance_type, n.zone.as_str())))
        .collect();
    for (pod, node) in &placement {
        let (instance_type, zone) = node_types.get(node.as_str()).copied().unwrap_or(("?", "?"));
        let rank = ranking
            .rank_of(zone, instance_type)
            .map_or("unranked".to_string(), |r| format!("rank {r}"));
        println!("    {pod:<28} → {node} ({instance_type}, {zone}, {rank})");
    }
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
        "Spot interruption warning for {victim_instance} ({victim}) through SQS; the instance dies {DEADLINE:?} later"
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
    let minimum = watch.finish().await;

    step("Timeline (seconds after the event)");
    timeline.print();
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

/// Timestamped milestones, printed as they happen and again at the end.
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
        let at = self.origin.elapsed();
        println!("    +{:>6.2}s  {what}", at.as_secs_f64());
        self.marks
            .lock()
            .expect("timeline")
            .push((at, what.to_string()));
    }

    fn print(&self) {
        for (at, what) in self.marks.lock().expect("timeline").iter() {
            println!("    +{:>6.2}s  {what}", at.as_secs_f64());
        }
    }
}

/// Polls every 100 ms: the victim node's taint, the Services' ready endpoints (keeping
/// each minimum), and the first Ready `web` endpoint on another node.
struct Watch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<BTreeMap<String, usize>>,
}

impl Watch {
    fn start(client: kube::Client, victim: String, timeline: Timeline) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
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
                    if tainted && !evicted && api_on_victim == 0 {
                        evicted = true;
                        timeline.mark(&format!(
                            "`api` has no pod left on {victim} (Eviction API, PDB respected); {} ready elsewhere",
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
            minimum
        });
        Self { stop, task }
    }

    async fn finish(self) -> BTreeMap<String, usize> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
