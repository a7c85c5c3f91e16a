//! `make demo`: the whole spotkube story on the embedded default, on 127.0.0.1 only.
//!
//! A real control plane with kwok, moto for SQS / EC2 / Auto Scaling / Pricing, and
//! spotkube's three programs as local processes. The node fleet is a capacity pool of two
//! Auto Scaling groups (issue 11): a spot group of the ranking's rank-1 type (one node, no
//! spare) and its on-demand fallback group (another type, empty); the rig's registrar
//! joins their instances as kwok Nodes. An opted-in namespace gets a single-replica `web`
//! and a PDB-protected three-replica `api`, which the webhook and the extender put on the
//! spot node. Then moto runs out of the spot type (the ICE switch) and a rebalance
//! recommendation arrives for that node: the controller asks the spot group, sees the
//! launch fail, falls back to the on-demand group, drains the old node onto the fallback
//! node and terminates it. When the spot capacity returns, the spot group fills again
//! and, once stable, the fallback node is drained and removed. The demo prints the
//! timeline from what the cluster and moto say, checks that no Service ever had zero
//! ready endpoints and that `api` never went below its PDB, and prints what the
//! workloads cost (`spotkube-controller savings`) on spot, on the fallback and back on
//! spot. Last, the Fargate chapter: in a second opted-in namespace served by a Fargate
//! profile (the rig's Fargate stand-in, 20 s to start a pod), a single-replica
//! `fallback: fargate` Deployment leaves its spot node for Fargate on an interruption
//! warning and, after its cooldown, comes back to a spare spot node with its pod template
//! byte for byte what it was, its Service never without a ready endpoint. Exits non-zero
//! if a check fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_autoscaling::types::ScalingActivityStatusCode;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::json;
use spotkube_rig::autoscaling::{self, GroupSpec, LaunchTemplate};
use spotkube_rig::aws::{EventKind, Moto};
use spotkube_rig::fargate::{FargateOptions, FargateStandIn, ProfileHandle};
use spotkube_rig::nodes::{is_ready, price_snapshot_path};
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{
    Cluster, EndpointWatch, ExtenderConfig, FakeNode, Program, Registrar, RegistrarOptions,
    wait_for, wait_for_ready_endpoints, wait_for_rollout, wait_for_schedulable_nodes, workloads,
};
use spotkube_shared::ranking::Ranking;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const NAMESPACE: &str = "demo";
const SCHEDULER: &str = "spotkube-scheduler";
const INTERRUPTION: &str = "spotkube.io/interruption";
const CAPACITY_REQUEST: &str = "spotkube.io/capacity-request";
const FALLBACK_FOR: &str = "spotkube.io/fallback-for";
const STABLE_SINCE: &str = "spotkube.io/spot-stable-since";
/// The capacity pool: `spotkube.io/pool=demo` on both groups.
const POOL: &str = "demo";
const SPOT_GROUP: &str = "demo-spot";
const ON_DEMAND_GROUP: &str = "demo-on-demand";
/// The pool's AZs (the spot group launches in the first while both are empty).
const POOL_ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];
/// The on-demand fallback's type (another type than the spot group's: moto's ICE switch
/// refuses a type in every market), unless the ranking puts it first.
const FALLBACK_TYPE: &str = "m7g.large";
/// How long an instance runs before its Node joins (bootstrap + kubelet registration).
const JOIN_DELAY: Duration = Duration::from_secs(2);
/// The PodDisruptionBudget of `api` (3 replicas).
const API_MIN_AVAILABLE: i32 = 2;
/// The Events of the story, each one expected on a Node at least once.
const STORY: [&str; 5] = [
    "SpotkubeCapacityRequested",
    "SpotkubeCapacityFallback",
    "SpotkubeReplacementReady",
    "SpotkubeNodeTerminated",
    "SpotkubeFallbackScaleBack",
];
/// The Fargate chapter's namespace (opted in) and its EKS Fargate profile, given to the
/// stand-in, the webhook and the controller alike.
const SHOP: &str = "shop";
const FARGATE_PROFILE: &str = "shop:spotkube.io/fargate=true";
/// How long the stand-in takes to start a pod on Fargate (EKS: 30–90 s).
const FARGATE_START_DELAY: Duration = Duration::from_secs(20);
/// `cart`'s stay on Fargate before spot is tried again (default 45m; short for the demo).
const FARGATE_COOLDOWN: &str = "30s";
/// The chapter's single-replica Deployment and Service.
const CART: &str = "cart";
/// `cart`'s own nodeSelector: its team's spot nodes (the doomed one and the spare).
const TEAM: (&str, &str) = ("example.com/team", "shop");
/// spotkube's state annotation and Fargate record on a Deployment.
const STATE: &str = "spotkube.io/state";
const FARGATE_RECORD: &str = "spotkube.io/fargate";
/// The Events of the Fargate chapter, each one expected once on `cart`.
const FARGATE_STORY: [&str; 4] = [
    "SpotkubeFargateFailover",
    "SpotkubeFargateReady",
    "SpotkubeRecoveryStarted",
    "SpotkubeRecovered",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spotkube_shared::telemetry::install_crypto_provider();
    // The rig's own progress logs (registrar joins, ...) go to stderr, warnings only: the
    // timeline says the same from the cluster. RUST_LOG overrides.
    let from_env = EnvFilter::try_from_default_env().ok();
    let user_set = from_env.is_some();
    let (filter, logs) =
        tracing_subscriber::reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new("warn")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    if !user_set {
        let _ = LOGS.set(logs);
    }
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

/// The log filter, when the demo chose it (not RUST_LOG).
static LOGS: OnceLock<tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>> =
    OnceLock::new();

/// No more logs: the Fargate stand-in outlives the control plane, and its watches would
/// warn about the stopped apiserver until the process exits.
fn quiet_teardown() {
    if let Some(logs) = LOGS.get() {
        let _ = logs.reload(EnvFilter::new("off"));
    }
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

    create_namespace(&client, "spotkube-system", false).await?;
    create_namespace(&client, NAMESPACE, true).await?;

    step(
        "Starting spotkube-controller: SQS intake, leader election, ranking from EC2 + Pricing (moto), capacity loop",
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
        .arg("--scale-back-interval=2s")
        // The capacity loop on a demo's clock (defaults: 5s, 4m, 10m, 3m).
        .arg("--capacity-interval=1s")
        .arg("--capacity-timeout=60s")
        .arg("--fallback-stable-window=10s")
        .arg("--ice-ttl=15s")
        // The Fargate chapter's profile; the recovery loop on a demo's clock (default 5s).
        .arg(format!("--fargate-profile={FARGATE_PROFILE}"))
        .arg("--fargate-interval=1s");
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
    println!(
        "    --capacity-interval=1s --capacity-timeout=60s --fallback-stable-window=10s --ice-ttl=15s"
    );
    println!("    --fargate-profile={FARGATE_PROFILE} --fargate-interval=1s (the Fargate chapter)");

    let spot_type = pick_spot_type(&ranking, &POOL_ZONES)
        .context("the ranking has no type for the pool's zones")?;
    let fallback_type = if spot_type == FALLBACK_TYPE {
        "m6i.large"
    } else {
        FALLBACK_TYPE
    };
    step(&format!(
        "Creating the capacity pool `{POOL}`: Auto Scaling group {SPOT_GROUP} (spot {spot_type}, the rank-1 type) and its on-demand fallback {ON_DEMAND_GROUP} ({fallback_type})"
    ));
    LaunchTemplate::new("demo-spot-lt", &spot_type)
        .create(&moto)
        .await?;
    LaunchTemplate::new("demo-on-demand-lt", fallback_type)
        .create(&moto)
        .await?;
    GroupSpec::new(SPOT_GROUP, "demo-spot-lt")
        .zones(&POOL_ZONES)
        .size(0, 3, 1)
        .mixed(&[spot_type.as_str()], 0, 0)
        .tags(&[("spotkube.io/pool", POOL), ("spotkube.io/capacity", "spot")])
        .create(&moto)
        .await?;
    GroupSpec::new(ON_DEMAND_GROUP, "demo-on-demand-lt")
        .zones(&POOL_ZONES)
        .size(0, 2, 0)
        .tags(&[
            ("spotkube.io/pool", POOL),
            ("spotkube.io/capacity", "on-demand"),
        ])
        .create(&moto)
        .await?;
    for (name, capacity, instance_type) in [
        (SPOT_GROUP, "spot", spot_type.as_str()),
        (ON_DEMAND_GROUP, "on-demand", fallback_type),
    ] {
        let (desired, instances) = group_state(&moto, name).await?;
        println!(
            "    {name:<15} {capacity:<9} {instance_type:<12} {} desired {desired}, max {}, instances {instances:?}",
            POOL_ZONES.join("+"),
            if capacity == "spot" { 3 } else { 2 }
        );
    }
    let registrar = Registrar::start(
        &moto,
        client.clone(),
        RegistrarOptions::default().join_delay(JOIN_DELAY),
    )
    .await;
    let (_, first) = group_state(&moto, SPOT_GROUP).await?;
    let victim_instance = first
        .first()
        .cloned()
        .context("the spot group's instance")?;
    let victim = wait_for(
        "the spot instance joins as a Node",
        Duration::from_secs(60),
        || async { Ok(registrar.node_name(&victim_instance)) },
    )
    .await?;
    wait_for_schedulable_nodes(&client, "", 1, Duration::from_secs(60)).await?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    anyhow::ensure!(
        nodes.items.len() == 1,
        "the demo wants one Node, the pool's; found {}",
        nodes.items.len()
    );
    let first_node = NodeFacts::of(&nodes.items[0]);
    println!(
        "    spot-1 = {victim} ({}), joined through the registrar {JOIN_DELAY:?} after its instance ran",
        first_node.describe()
    );
    println!(
        "    the cluster's only worker node: no spare capacity (spotkube's programs run as local processes)"
    );

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
        .start_webhook(
            ProgramOptions::default()
                .arg(format!("--scheduler-name={SCHEDULER}"))
                .arg(format!("--fargate-profile={FARGATE_PROFILE}")),
        )
        .await?;
    cluster
        .register_webhook("spotkube-demo", &webhook, NAMESPACE)
        .await?;
    println!("    --scheduler-name={SCHEDULER} --fargate-profile={FARGATE_PROFILE}");
    wait_opted_in(&client, NAMESPACE).await?;

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
    let facts = node_facts(&client).await?;
    for (pod, node) in &placement {
        let fact = facts.get(node).cloned().unwrap_or_default();
        let rank = ranking
            .rank_of(&fact.zone, &fact.instance_type)
            .map_or("unranked".to_string(), |r| format!("rank {r}"));
        println!(
            "    {pod:<28} → {node} ({}, {}, {rank})",
            fact.instance_type, fact.zone
        );
    }
    check_rank_one(&placement, &facts, &ranking)?;
    println!(
        "    every pod is on a rank-1 spot node of its AZ, selected by the webhook + extender"
    );

    step("What the workloads cost now (`spotkube-controller savings --namespace demo`)");
    print_savings(&cluster, &moto).await?;

    step(&format!(
        "Out of {spot_type} (moto's ICE switch), then a rebalance recommendation for {victim_instance} (spot-1, `web`'s node)"
    ));
    let timeline = Timeline::start();
    let watch = Watch::start(
        client.clone(),
        moto.autoscaling().await,
        BTreeMap::from([(victim.clone(), "spot-1".to_string())]),
        timeline.clone(),
    )
    .await;
    moto.set_insufficient_capacity(&[spot_type.as_str()])
        .await?;
    timeline.mark(&format!(
        "ICE switch on: every {spot_type} launch fails (InsufficientInstanceCapacity)"
    ));
    moto.send_event(
        &queues.url,
        EventKind::RebalanceRecommendation,
        &victim_instance,
        jiff::Timestamp::now(),
    )
    .await?;
    timeline.mark("rebalance recommendation put on the SQS queue");
    let fallback = wait_for(
        "the on-demand fallback to replace spot-1",
        Duration::from_secs(120),
        || async {
            if registrar.node_name(&victim_instance).is_some() {
                return Ok(None);
            }
            let (spot_desired, _) = group_state(&moto, SPOT_GROUP).await?;
            let (_, od) = group_state(&moto, ON_DEMAND_GROUP).await?;
            let joined = match od.as_slice() {
                [one] => registrar.node_name(one),
                _ => None,
            };
            Ok(joined.filter(|_| spot_desired == 1))
        },
    )
    .await?;
    for name in ["web", "api"] {
        wait_for_rollout(&client, NAMESPACE, name, Duration::from_secs(60)).await?;
    }
    let on_fallback = pod_placement(&client).await?;
    anyhow::ensure!(
        on_fallback.values().all(|n| *n == fallback),
        "pods not on the fallback node {fallback}: {on_fallback:?}"
    );
    let (spot_desired, spot_instances) = group_state(&moto, SPOT_GROUP).await?;
    watch.settle().await;
    timeline.mark(&format!(
        "replaced: every pod on the on-demand fallback; {SPOT_GROUP} back at desired {spot_desired} ({} instances: still out of capacity)",
        spot_instances.len()
    ));

    step("What the workloads cost on the on-demand fallback");
    print_savings(&cluster, &moto).await?;

    step(&format!(
        "The {spot_type} capacity returns: the spot group fills, stays whole for the stable window, the fallback goes"
    ));
    moto.clear_insufficient_capacity().await?;
    timeline.mark("ICE switch off");
    let spot_node = wait_for(
        "the fallback node to be scaled back",
        Duration::from_secs(120),
        || async {
            if registrar.joined().values().any(|n| *n == fallback) {
                return Ok(None);
            }
            let (od_desired, od) = group_state(&moto, ON_DEMAND_GROUP).await?;
            let (_, spot) = group_state(&moto, SPOT_GROUP).await?;
            let joined = match spot.as_slice() {
                [one] if *one != victim_instance => registrar.node_name(one),
                _ => None,
            };
            Ok(joined.filter(|_| od_desired == 0 && od.is_empty()))
        },
    )
    .await?;
    for name in ["web", "api"] {
        wait_for_rollout(&client, NAMESPACE, name, Duration::from_secs(60)).await?;
    }
    wait_for("the queue drains", Duration::from_secs(30), || async {
        Ok((moto.queue_depth(&queues.url).await? == 0).then_some(()))
    })
    .await?;
    let observed = watch.finish().await;
    timeline.mark("scaled back: every pod on the new spot node; queue empty");

    step("Checks");
    let (spot_desired, spot_instances) = group_state(&moto, SPOT_GROUP).await?;
    let (od_desired, od_instances) = group_state(&moto, ON_DEMAND_GROUP).await?;
    println!(
        "    {SPOT_GROUP:<15} desired {spot_desired}, instances {spot_instances:?} (was {victim_instance})"
    );
    println!("    {ON_DEMAND_GROUP:<15} desired {od_desired}, instances {od_instances:?}");
    anyhow::ensure!(
        (
            spot_desired,
            spot_instances.len(),
            od_desired,
            od_instances.len()
        ) == (1, 1, 0, 0),
        "the groups should end at spot 1/1, on-demand 0/0"
    );
    println!(
        "    moto's Auto Scaling failed {} launch attempts of {spot_type} while it was out of capacity",
        observed.failed_launches
    );
    let missing: Vec<&str> = STORY
        .iter()
        .copied()
        .filter(|r| !observed.reasons.contains(*r))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "Events of the story never recorded: {missing:?}"
    );
    println!("    Events recorded: {}", STORY.join(", "));
    let placement = pod_placement(&client).await?;
    let facts = node_facts(&client).await?;
    check_rank_one(&placement, &facts, &ranking)?;
    println!("    every pod is back on a rank-1 spot node: {spot_node}");
    for (node, alias) in [(&victim, "spot-1"), (&fallback, "on-demand-1")] {
        check_pdb_respected(
            observed.drained.contains(node),
            observed.minimum.get("api").copied(),
            API_MIN_AVAILABLE,
        )
        .with_context(|| format!("draining {alias}"))?;
    }
    println!(
        "    PDB respected: `api` left spot-1 and on-demand-1 before they were terminated and never had fewer than {API_MIN_AVAILABLE} ready endpoints"
    );

    step("What the workloads cost back on spot");
    print_savings(&cluster, &moto).await?;

    step("Minimum ready endpoints per Service from the ICE to the end (polled every 100 ms)");
    let mut dark = Vec::new();
    for (service, min) in &observed.minimum {
        println!("    {service:<6} {min}");
        if *min == 0 {
            dark.push(service.clone());
        }
    }
    anyhow::ensure!(
        dark.is_empty(),
        "Services with zero ready endpoints at some moment: {dark:?}"
    );

    let chapter = fargate_chapter(&cluster, &moto, &queues.url, &webhook, &spot_type).await;
    quiet_teardown();
    chapter?;
    registrar.stop().await;
    Ok(())
}

async fn create_namespace(client: &kube::Client, name: &str, opted_in: bool) -> anyhow::Result<()> {
    let annotations =
        opted_in.then(|| BTreeMap::from([("spotkube.io/enabled".to_string(), "true".to_string())]));
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    annotations,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(())
}

/// The webhook selects namespaces by label; waits for the controller to mirror the
/// opt-in annotation of `name` to it.
async fn wait_opted_in(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for(
        "the controller to mirror the opt-in to a label",
        Duration::from_secs(30),
        || async {
            let ns = namespaces.get(name).await?;
            let labelled = ns
                .metadata
                .labels
                .is_some_and(|l| l.get("spotkube.io/enabled").map(String::as_str) == Some("true"));
            Ok(labelled.then_some(()))
        },
    )
    .await?;
    println!("    {name}: spotkube.io/enabled annotation mirrored to a label by the controller");
    Ok(())
}

// ---- the Fargate chapter ----------------------------------------------------------

/// The Fargate chapter: `cart` moves to Fargate on an interruption warning and comes back
/// to spot after its cooldown, with zero gap and its pod template untouched.
async fn fargate_chapter(
    cluster: &Cluster,
    moto: &Moto,
    queue_url: &str,
    webhook: &Program,
    spot_type: &str,
) -> anyhow::Result<()> {
    step(&format!(
        "Fargate: namespace `{SHOP}` opted in and served by the Fargate profile {FARGATE_PROFILE} (the rig's stand-in for EKS's Fargate webhook and fargate-scheduler, {FARGATE_START_DELAY:?} to start a pod)"
    ));
    let client = cluster.client().await?;
    let _profile = serve_shop(cluster, &client, webhook).await?;

    step(&format!(
        "Deploying `{CART}` (1 replica, a Service; spotkube.io/fallback: fargate, spotkube.io/fargate-cooldown: {FARGATE_COOLDOWN}) on a {spot_type} spot node, and a spare spot node for the way back"
    ));
    let shop = Shop::deploy(client, spot_type).await?;

    step(&format!(
        "A spot interruption warning for {} (spot-a, `{CART}`'s node): to Fargate, then back to spot once the cooldown is over",
        shop.doomed.instance_id
    ));
    let endpoints = EndpointWatch::start(&shop.client, SHOP, CART);
    let moved = shop.interrupt_and_recover(moto, queue_url).await;
    // A last look after the recovery: the old Fargate pod goes after the new one is Ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (fewest, samples) = endpoints.finish().await;
    moved?;

    step(&format!("Checks (`{CART}`)"));
    check_zero_gap(fewest, samples)?;
    shop.check_template().await?;
    shop.print_events().await
}

/// Opts `shop` in, serves its profile on the Fargate stand-in and registers the demo's
/// webhook (started with the profile) for it; the profile is served while the handle lives.
async fn serve_shop(
    cluster: &Cluster,
    client: &kube::Client,
    webhook: &Program,
) -> anyhow::Result<ProfileHandle> {
    create_namespace(client, SHOP, true).await?;
    let stand_in = FargateStandIn::shared(cluster).await?;
    let profile = stand_in.serve(
        FARGATE_PROFILE.parse()?,
        FargateOptions {
            start_delay: FARGATE_START_DELAY,
            ..FargateOptions::default()
        },
    );
    println!(
        "    {}: EKS's webhook, sends a pod matching a profile to fargate-scheduler",
        spotkube_rig::fargate::WEBHOOK_CONFIGURATION
    );
    // Configurations are called in name order: EKS's `0500-…` first, then spotkube's.
    cluster
        .register_webhook(&format!("spotkube-{SHOP}"), webhook, SHOP)
        .await?;
    println!(
        "    spotkube-{SHOP}: spotkube-webhook (--fargate-profile={FARGATE_PROFILE}) for {SHOP}, called after EKS's"
    );
    wait_opted_in(client, SHOP).await?;
    Ok(profile)
}

/// The Fargate chapter's world: `cart` on its spot node, the spare, and what `cart`'s
/// pod template and strategy were before anything moved.
struct Shop {
    client: kube::Client,
    doomed: FakeNode,
    spare: FakeNode,
    template: serde_json::Value,
    strategy: serde_json::Value,
}

impl Shop {
    /// `cart` and its Service on spot-a, then the spare spot-b.
    async fn deploy(client: kube::Client, spot_type: &str) -> anyhow::Result<Shop> {
        let doomed = team_node(&client, spot_type, POOL_ZONES[0], "spot-a").await?;
        let created = Api::<Deployment>::namespaced(client.clone(), SHOP)
            .create(&PostParams::default(), &cart_deployment())
            .await
            .context("create deployment cart")?;
        Api::<Service>::namespaced(client.clone(), SHOP)
            .create(&PostParams::default(), &workloads::service(CART))
            .await
            .context("create service cart")?;
        wait_for_rollout(&client, SHOP, CART, Duration::from_secs(90)).await?;
        wait_for_ready_endpoints(&client, SHOP, CART, 1, Duration::from_secs(30)).await?;
        let pod = wait_cart_pod(&client, "cart Ready on spot-a", |n| n == doomed.name).await?;
        let scheduler = pod.spec.as_ref().and_then(|s| s.scheduler_name.clone());
        println!(
            "    {:<28} → spot-a (schedulerName {})",
            pod.metadata.name.unwrap_or_default(),
            scheduler.unwrap_or_default()
        );
        let spare = team_node(&client, spot_type, POOL_ZONES[1], "spot-b").await?;
        let spec = created.spec.context("cart's spec")?;
        Ok(Shop {
            template: serde_json::to_value(&spec.template)?,
            strategy: serde_json::to_value(&spec.strategy)?,
            client,
            doomed,
            spare,
        })
    }

    /// The warning, then each step of the move as a timeline line, in seconds since it.
    async fn interrupt_and_recover(&self, moto: &Moto, queue_url: &str) -> anyhow::Result<()> {
        let timeline = Timeline::start();
        moto.send_event(
            queue_url,
            EventKind::SpotInterruptionWarning,
            &self.doomed.instance_id,
            jiff::Timestamp::now(),
        )
        .await?;
        timeline.mark("spot interruption warning put on the SQS queue (2 minutes' notice)");
        let moved = self
            .wait_cart("the failover patch", |d| state_of(d) == Some("fargate"))
            .await?;
        timeline.mark(&format!(
            "failover patch: state fargate, template + spotkube.io/fargate=true, maxUnavailable 0 (reason: event {})",
            annotation(&moved, "spotkube.io/reason").unwrap_or_default()
        ));
        let pod = wait_cart_pod(&self.client, "cart Ready on Fargate", |n| {
            n.starts_with("fargate-ip-")
        })
        .await?;
        timeline.mark(&format!(
            "{} Ready on {} (fargate-scheduler; the spot pod served meanwhile)",
            pod.metadata.name.unwrap_or_default(),
            pod.spec.and_then(|s| s.node_name).unwrap_or_default()
        ));
        self.wait_cart("the failover to settle", |d| settled(d, "fargate"))
            .await?;
        timeline.mark("failover done: rollout complete, the Service's endpoint on Fargate");
        spotkube_rig::faults::terminate_node(&self.client, &self.doomed.name).await?;
        timeline.mark("spot-a's instance killed: its pods and Node deleted");
        self.wait_cart("the recovery", |d| state_of(d) == Some("recovering"))
            .await?;
        timeline.mark(&format!(
            "recovery started: state recovering, the profile's label off the template (cooldown {FARGATE_COOLDOWN} over, spot-b has room)"
        ));
        self.wait_cart("the recovery to settle", |d| settled(d, "spot"))
            .await?;
        let pod = wait_cart_pod(&self.client, "cart Ready on spot-b", |n| {
            n == self.spare.name
        })
        .await?;
        timeline.mark(&format!(
            "recovered: state spot, {} Ready on spot-b, strategy restored",
            pod.metadata.name.unwrap_or_default()
        ));
        Ok(())
    }

    /// `cart` once `done` holds (at most 90 s: the cooldown and a Fargate start).
    async fn wait_cart(
        &self,
        what: &str,
        done: impl Fn(&Deployment) -> bool,
    ) -> anyhow::Result<Deployment> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), SHOP);
        Ok(wait_for(what, Duration::from_secs(90), || async {
            let d = deployments.get(CART).await?;
            Ok(done(&d).then_some(d))
        })
        .await?)
    }

    /// "Byte for byte": the pod template after the recovery is what it was (JSON equal),
    /// and so is the strategy.
    async fn check_template(&self) -> anyhow::Result<()> {
        let d = Api::<Deployment>::namespaced(self.client.clone(), SHOP)
            .get(CART)
            .await?;
        let spec = d.spec.context("cart's spec")?;
        let template = serde_json::to_value(&spec.template)?;
        anyhow::ensure!(
            template == self.template,
            "the pod template is not what it was: before {}, after {template}",
            self.template
        );
        anyhow::ensure!(
            serde_json::to_value(&spec.strategy)? == self.strategy,
            "the strategy is not what it was"
        );
        println!(
            "    pod template after the recovery: byte for byte what it was before (JSON equal, {} bytes); strategy restored",
            template.to_string().len()
        );
        Ok(())
    }

    /// spotkube's Events on `cart`, in order; fails if one of the story's is missing.
    async fn print_events(&self) -> anyhow::Result<()> {
        let mut events: Vec<Event> = Api::<Event>::namespaced(self.client.clone(), SHOP)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("Spotkube"))
            })
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Deployment") && r.name.as_deref() == Some(CART)
                })
            })
            .collect();
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        println!("    Events spotkube recorded on deployment/{CART}:");
        for event in &events {
            println!(
                "      {:<24} {}",
                event.reason.as_deref().unwrap_or_default(),
                event.note.as_deref().unwrap_or_default()
            );
        }
        let missing: Vec<&str> = FARGATE_STORY
            .iter()
            .copied()
            .filter(|r| !events.iter().any(|e| e.reason.as_deref() == Some(*r)))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "Events of the Fargate story never recorded: {missing:?}"
        );
        Ok(())
    }
}

/// `cart`: one pause pod on its team's nodes (the user's own nodeSelector), grace 1 s,
/// `fallback: fargate` with the demo's cooldown.
fn cart_deployment() -> Deployment {
    let deployment = workloads::with_node_selector(workloads::deployment(CART, 1), TEAM.0, TEAM.1);
    let mut deployment = workloads::with_grace_period(deployment, 1);
    deployment.metadata.annotations = Some(BTreeMap::from([
        ("spotkube.io/fallback".to_string(), "fargate".to_string()),
        (
            "spotkube.io/fargate-cooldown".to_string(),
            FARGATE_COOLDOWN.to_string(),
        ),
    ]));
    deployment
}

/// A spot Node of `cart`'s team (kwok; no instance in moto), schedulable when it returns.
async fn team_node(
    client: &kube::Client,
    instance_type: &str,
    zone: &str,
    alias: &str,
) -> anyhow::Result<FakeNode> {
    let node = FakeNode::spot(instance_type, zone).with_label(TEAM.0, TEAM.1);
    let created = node.create(client).await?;
    let team = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{}={}", TEAM.0, TEAM.1)))
        .await?;
    wait_for_schedulable_nodes(
        client,
        &format!("{}={}", TEAM.0, TEAM.1),
        team.items.len(),
        Duration::from_secs(60),
    )
    .await?;
    println!(
        "    {alias} = {} ({}), labelled {}={}",
        node.name,
        NodeFacts::of(&created).describe(),
        TEAM.0,
        TEAM.1
    );
    Ok(node)
}

/// A Ready, non-terminating pod of `cart` on a Node for which `on` holds (within 90 s).
async fn wait_cart_pod(
    client: &kube::Client,
    what: &str,
    on: impl Fn(&str) -> bool,
) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SHOP);
    Ok(wait_for(what, Duration::from_secs(90), || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={CART}")))
            .await?;
        Ok(list.items.into_iter().find(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            p.metadata.deletion_timestamp.is_none() && node.is_some_and(&on) && pod_ready(p)
        }))
    })
    .await?)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn annotation(d: &Deployment, key: &str) -> Option<String> {
    d.metadata.annotations.as_ref()?.get(key).cloned()
}

fn state_of(d: &Deployment) -> Option<&str> {
    d.metadata
        .annotations
        .as_ref()?
        .get(STATE)
        .map(String::as_str)
}

/// In `state` with no Fargate rollout in flight (the record names it while one is).
fn settled(d: &Deployment, state: &str) -> bool {
    state_of(d) == Some(state)
        && annotation(d, FARGATE_RECORD).is_none_or(|r| !r.contains("\"rollout\""))
}

/// "Zero gap": `cart`'s Service had a ready endpoint at every sample, from before the
/// warning to after the recovery.
fn check_zero_gap(fewest: usize, samples: usize) -> anyhow::Result<()> {
    println!(
        "    `{CART}` ready endpoints, polled every 100 ms from before the warning to after the recovery: minimum {fewest} over {samples} samples"
    );
    anyhow::ensure!(
        samples >= 100,
        "only {samples} samples of `{CART}`'s endpoints"
    );
    anyhow::ensure!(
        fewest >= 1,
        "`{CART}` had zero ready endpoints at some moment"
    );
    Ok(())
}

/// A group's desired capacity and instance ids, as Auto Scaling describes them.
async fn group_state(moto: &Moto, name: &str) -> anyhow::Result<(i32, Vec<String>)> {
    let group = autoscaling::group(moto, name).await?;
    Ok((
        group.desired_capacity().unwrap_or_default(),
        autoscaling::instance_ids(&group),
    ))
}

/// The spot group's type: rank 1 in every zone of the pool if one type is, else rank 1
/// in the first zone (where the group launches first).
fn pick_spot_type(ranking: &Ranking, zones: &[&str]) -> Option<String> {
    let first = ranking.zones.get(*zones.first()?)?;
    let everywhere = first.iter().find(|e| {
        zones
            .iter()
            .all(|z| ranking.rank_of(z, &e.instance_type) == Some(1))
    });
    everywhere
        .or_else(|| first.iter().find(|e| e.rank == 1))
        .map(|e| e.instance_type.clone())
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

/// Pod name → node name, for every pod of the demo namespace that is not terminating.
async fn pod_placement(client: &kube::Client) -> anyhow::Result<BTreeMap<String, String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await?;
    Ok(pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
        .collect())
}

/// What a Node's labels and providerID say about its instance.
#[derive(Debug, Clone, Default, PartialEq)]
struct NodeFacts {
    instance_type: String,
    zone: String,
    spot: bool,
    instance_id: String,
}

impl NodeFacts {
    fn of(node: &Node) -> Self {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let provider = node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.clone())
            .unwrap_or_default();
        Self {
            instance_type: label("node.kubernetes.io/instance-type"),
            zone: label("topology.kubernetes.io/zone"),
            spot: label("eks.amazonaws.com/capacityType") == "SPOT",
            instance_id: provider.rsplit('/').next().unwrap_or_default().to_string(),
        }
    }

    fn capacity(&self) -> &'static str {
        if self.spot { "spot" } else { "on-demand" }
    }

    fn describe(&self) -> String {
        format!(
            "{} {} {} {}",
            self.instance_type,
            self.capacity(),
            self.zone,
            self.instance_id
        )
    }
}

/// Node name → what it is, for every Node.
async fn node_facts(client: &kube::Client) -> anyhow::Result<BTreeMap<String, NodeFacts>> {
    Ok(Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter_map(|n| {
            let facts = NodeFacts::of(&n);
            Some((n.metadata.name?, facts))
        })
        .collect())
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

/// What the watch saw, from the ICE to the end.
#[derive(Default)]
struct Observed {
    /// Each Service's fewest ready endpoints.
    minimum: BTreeMap<String, usize>,
    /// Nodes spotkube tainted `NoSchedule` that `api` left while they still existed.
    drained: BTreeSet<String>,
    /// The reasons of spotkube's Events on Nodes.
    reasons: BTreeSet<String>,
    /// Failed scaling activities of the spot group.
    failed_launches: usize,
}

/// Polls every 100 ms: the Nodes (joins, leaves, spotkube's taint, cordon, capacity
/// request phase and fallback annotations), the Services' ready endpoints (where, and
/// each minimum) and spotkube's Events on Nodes; every 300 ms the pool's groups and the
/// spot group's scaling activities in moto. Each change is a timeline line.
struct Watch {
    stop: tokio::sync::watch::Sender<bool>,
    /// Polls done, so the demo can wait until the watch has seen what it waited for.
    polls: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<Observed>,
}

/// The last thing the watch saw of a Node.
#[derive(Default, Clone, PartialEq)]
struct NodeSeen {
    ready: bool,
    taint: Option<String>,
    cordoned: bool,
    phase: Option<String>,
    fallback_for: Option<String>,
    stable_since: bool,
}

struct Poller {
    client: kube::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    timeline: Timeline,
    /// Node name → `spot-N` / `on-demand-N`.
    aliases: BTreeMap<String, String>,
    /// Instance id → the alias of its Node.
    instances: BTreeMap<String, String>,
    nodes: BTreeMap<String, NodeSeen>,
    events: BTreeSet<String>,
    groups: BTreeMap<String, (i32, Vec<String>)>,
    activities: BTreeSet<String>,
    /// Service → "where its ready endpoints are" as last printed.
    spread: BTreeMap<String, String>,
    observed: Observed,
    polls: u64,
}

impl Poller {
    fn alias(&mut self, node: &str, facts: Option<&NodeFacts>) -> String {
        if let Some(alias) = self.aliases.get(node) {
            return alias.clone();
        }
        let Some(facts) = facts else {
            return node.to_string();
        };
        let kind = facts.capacity();
        let n = self
            .aliases
            .values()
            .filter(|a| a.rsplit_once('-').is_some_and(|(k, _)| k == kind))
            .count()
            + 1;
        let alias = format!("{kind}-{n}");
        self.aliases.insert(node.to_string(), alias.clone());
        alias
    }

    async fn poll(&mut self, first: bool) {
        let mark = |p: &Self, what: String| {
            if !first {
                p.timeline.mark(&what);
            }
        };
        let mut present = BTreeSet::new();
        if let Ok(list) = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            // Aliases first: a request names its replacement Node.
            for node in &list {
                let name = node.metadata.name.clone().unwrap_or_default();
                self.alias(&name, Some(&NodeFacts::of(node)));
            }
            for node in list {
                let name = node.metadata.name.clone().unwrap_or_default();
                let facts = NodeFacts::of(&node);
                let annotations = node.metadata.annotations.clone().unwrap_or_default();
                let spec = node.spec.clone().unwrap_or_default();
                let seen = NodeSeen {
                    ready: is_ready(&node),
                    taint: spec
                        .taints
                        .unwrap_or_default()
                        .iter()
                        .find(|t| t.key == INTERRUPTION)
                        .map(|t| t.effect.clone()),
                    cordoned: spec.unschedulable == Some(true),
                    phase: annotations.get(CAPACITY_REQUEST).map(|v| {
                        request_summary(v, |n| {
                            self.aliases.get(n).cloned().unwrap_or_else(|| n.into())
                        })
                    }),
                    fallback_for: annotations.get(FALLBACK_FOR).cloned(),
                    stable_since: annotations.contains_key(STABLE_SINCE),
                };
                present.insert(name.clone());
                let before = self.nodes.get(&name).cloned();
                let alias = self.alias(&name, Some(&facts));
                self.instances
                    .insert(facts.instance_id.clone(), alias.clone());
                let was = before.clone().unwrap_or_default();
                if seen.ready && !was.ready {
                    mark(
                        self,
                        format!("{alias} = {name} joined, Ready ({})", facts.describe()),
                    );
                }
                if seen.taint != was.taint
                    && let Some(effect) = &seen.taint
                {
                    mark(self, format!("{alias} tainted {INTERRUPTION}:{effect}"));
                }
                if seen.cordoned && !was.cordoned {
                    mark(self, format!("{alias} cordoned"));
                }
                if seen.phase != was.phase
                    && let Some(phase) = &seen.phase
                {
                    mark(self, format!("{alias} capacity request: {phase}"));
                }
                if seen.fallback_for != was.fallback_for
                    && let Some(pool) = &seen.fallback_for
                {
                    mark(self, format!("{alias} annotated {FALLBACK_FOR}={pool}"));
                }
                if seen.stable_since && !was.stable_since {
                    mark(
                        self,
                        format!(
                            "{alias}: spot group whole (InService = Desired, Ready, its offering no longer marked): the stable window starts"
                        ),
                    );
                }
                self.nodes.insert(name, seen);
            }
            let gone: Vec<String> = self
                .nodes
                .keys()
                .filter(|n| !present.contains(*n))
                .cloned()
                .collect();
            for name in gone {
                self.nodes.remove(&name);
                let alias = self.alias(&name, None);
                mark(
                    self,
                    format!(
                        "{alias} Node gone (its instance terminated; the registrar removed it)"
                    ),
                );
            }
        }
        if let Ok(list) = Api::<EndpointSlice>::namespaced(self.client.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await
        {
            // Service → node → ready endpoints.
            let mut ready: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
            for slice in list {
                let service = slice
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .remove("kubernetes.io/service-name")
                    .unwrap_or_default();
                let on = ready.entry(service).or_default();
                for endpoint in slice.endpoints.into_iter().flatten() {
                    if endpoint
                        .conditions
                        .as_ref()
                        .and_then(|c| c.ready)
                        .unwrap_or(false)
                    {
                        *on.entry(endpoint.node_name.unwrap_or_default())
                            .or_default() += 1;
                    }
                }
            }
            for service in ["web", "api"] {
                let on = ready.get(service).cloned().unwrap_or_default();
                let total: usize = on.values().sum();
                let min = self
                    .observed
                    .minimum
                    .entry(service.to_string())
                    .or_insert(total);
                *min = (*min).min(total);
                // By alias, so the order reads the same from run to run.
                let by_alias: BTreeMap<&String, &usize> = on
                    .iter()
                    .map(|(node, n)| (self.aliases.get(node).unwrap_or(node), n))
                    .collect();
                let spread: Vec<String> = by_alias
                    .iter()
                    .map(|(alias, n)| format!("{alias} ×{n}"))
                    .collect();
                let spread = format!("{total} ready ({})", spread.join(", "));
                if self.spread.get(service) != Some(&spread) {
                    // The first line shows where everything starts.
                    self.timeline.mark(&format!("`{service}` {spread}"));
                    self.spread.insert(service.to_string(), spread);
                }
                if service == "api" {
                    let drained: Vec<String> = self
                        .nodes
                        .iter()
                        .filter(|(n, s)| {
                            s.taint.as_deref() == Some("NoSchedule")
                                && !on.contains_key(*n)
                                && !self.observed.drained.contains(*n)
                        })
                        .map(|(n, _)| n.clone())
                        .collect();
                    for node in drained {
                        let alias = self.alias(&node, None);
                        mark(
                            self,
                            format!(
                                "`api` has no pod left on {alias} (Eviction API, PDB respected); {total} ready elsewhere"
                            ),
                        );
                        self.observed.drained.insert(node);
                    }
                }
            }
        }
        if let Ok(list) = Api::<Event>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            let mut events: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| {
                    e.reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("Spotkube"))
                })
                .filter(|e| {
                    e.regarding
                        .as_ref()
                        .is_some_and(|r| r.kind.as_deref() == Some("Node"))
                })
                .collect();
            events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
            for event in events {
                let uid = event.metadata.uid.clone().unwrap_or_default();
                if !self.events.insert(uid) {
                    continue;
                }
                let reason = event.reason.clone().unwrap_or_default();
                let node = event
                    .regarding
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default();
                let alias = self.alias(&node, None);
                mark(
                    self,
                    format!(
                        "Event {reason} on {alias}: {}",
                        event.note.clone().unwrap_or_default()
                    ),
                );
                if !first {
                    self.observed.reasons.insert(reason);
                }
            }
        }
        if self.polls.is_multiple_of(3) {
            self.poll_groups(first).await;
        }
        self.polls += 1;
    }

    async fn poll_groups(&mut self, first: bool) {
        if let Ok(out) = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(SPOT_GROUP)
            .auto_scaling_group_names(ON_DEMAND_GROUP)
            .send()
            .await
        {
            for group in out.auto_scaling_groups() {
                let name = group
                    .auto_scaling_group_name()
                    .unwrap_or_default()
                    .to_string();
                let state = (
                    group.desired_capacity().unwrap_or_default(),
                    autoscaling::instance_ids(group),
                );
                if self.groups.get(&name) != Some(&state) {
                    let instances: Vec<String> = state
                        .1
                        .iter()
                        .map(|id| match self.instances.get(id) {
                            Some(alias) => format!("{id} ({alias})"),
                            None => id.clone(),
                        })
                        .collect();
                    self.timeline.mark(&format!(
                        "{name}: desired {}, instances [{}]",
                        state.0,
                        instances.join(", ")
                    ));
                    self.groups.insert(name, state);
                }
            }
        }
        if let Ok(out) = self
            .autoscaling
            .describe_scaling_activities()
            .auto_scaling_group_name(SPOT_GROUP)
            .send()
            .await
        {
            let mut failed: Vec<_> = out
                .activities()
                .iter()
                .filter(|a| a.status_code() == Some(&ScalingActivityStatusCode::Failed))
                .filter(|a| {
                    a.activity_id()
                        .is_some_and(|id| !self.activities.contains(id))
                })
                .collect();
            failed.reverse();
            for activity in failed {
                self.activities
                    .insert(activity.activity_id().unwrap_or_default().to_string());
                if first {
                    continue;
                }
                self.observed.failed_launches += 1;
                if self.observed.failed_launches == 1 {
                    self.timeline.mark(&format!(
                        "{SPOT_GROUP}: launch Failed: {} (Auto Scaling keeps retrying)",
                        activity.status_message().unwrap_or_default()
                    ));
                }
            }
        }
    }
}

/// The request annotation, shortened: phase, then the group and desired capacity while
/// asking, the replacement Node (through `alias`) once paired, and the trigger.
fn request_summary(value: &str, alias: impl Fn(&str) -> String) -> String {
    let Ok(request) = serde_json::from_str::<serde_json::Value>(value) else {
        return "(unreadable)".to_string();
    };
    let phase = request["phase"].as_str().unwrap_or("?");
    let mut out = phase.to_string();
    let asking = matches!(phase, "requesting" | "requested");
    if let (true, Some(group)) = (asking, request["group"].as_str()) {
        let side = if request["fallback"] == true {
            "on-demand fallback"
        } else {
            "group"
        };
        out.push_str(&format!(" ({side} {group}"));
        if let (Some(from), Some(to)) = (request["from"].as_i64(), request["to"].as_i64()) {
            out.push_str(&format!(", desired {from} → {to}"));
        }
        out.push(')');
    }
    if let (false, Some(node)) = (asking, request["replacementNode"].as_str()) {
        out.push_str(&format!(", replacement {}", alias(node)));
    }
    if let Some(trigger) = request["trigger"].as_str() {
        out.push_str(&format!(", trigger {trigger}"));
    }
    out
}

impl Watch {
    /// Takes a first look (Services and groups print where they start), then polls.
    async fn start(
        client: kube::Client,
        autoscaling: aws_sdk_autoscaling::Client,
        aliases: BTreeMap<String, String>,
        timeline: Timeline,
    ) -> Self {
        let mut poller = Poller {
            client,
            autoscaling,
            timeline,
            aliases,
            instances: BTreeMap::new(),
            nodes: BTreeMap::new(),
            events: BTreeSet::new(),
            groups: BTreeMap::new(),
            activities: BTreeSet::new(),
            spread: BTreeMap::new(),
            observed: Observed::default(),
            polls: 0,
        };
        poller.poll(true).await;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = polls.clone();
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => {}
                }
                poller.poll(false).await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            // A last full look (groups included), so the end state is on the timeline.
            poller.polls = 0;
            poller.poll(false).await;
            poller.observed
        });
        Self { stop, polls, task }
    }

    /// Returns after the watch has taken a full look (groups included) that began after
    /// this call: what the demo just waited for is on the timeline by then.
    async fn settle(&self) {
        let from = self.polls.load(std::sync::atomic::Ordering::SeqCst);
        while self.polls.load(std::sync::atomic::Ordering::SeqCst) < from + 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    facts: &BTreeMap<String, NodeFacts>,
    ranking: &Ranking,
) -> anyhow::Result<()> {
    anyhow::ensure!(!placement.is_empty(), "no pod placed");
    let misplaced: Vec<String> = placement
        .iter()
        .filter(|(_, node)| {
            !facts
                .get(node.as_str())
                .is_some_and(|f| f.spot && ranking.rank_of(&f.zone, &f.instance_type) == Some(1))
        })
        .map(|(pod, node)| format!("{pod} on {node}"))
        .collect();
    anyhow::ensure!(
        misplaced.is_empty(),
        "pods not on a rank-1 spot node: {misplaced:?}"
    );
    Ok(())
}

/// "PDB respected": `api` left the node before its instance was terminated, through
/// evictions that never took it below the budget's `minAvailable` ready endpoints.
fn check_pdb_respected(
    drained: bool,
    fewest_ready: Option<usize>,
    min_available: i32,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        drained,
        "`api` still had a pod on the node when its instance was terminated"
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

    fn ranking(zones: &[(&str, &[&str])]) -> Ranking {
        Ranking {
            schema_version: spotkube_shared::ranking::SCHEMA_VERSION.into(),
            computed_at: jiff::Timestamp::UNIX_EPOCH,
            source: "test".into(),
            region: None,
            criteria: None,
            zones: zones
                .iter()
                .map(|(zone, types)| {
                    let entries = types
                        .iter()
                        .enumerate()
                        .map(|(i, t)| ranked(i as u32 + 1, t))
                        .collect();
                    (zone.to_string(), entries)
                })
                .collect(),
            unavailable: Vec::new(),
        }
    }

    fn facts(instance_type: &str, spot: bool) -> NodeFacts {
        NodeFacts {
            instance_type: instance_type.into(),
            zone: "us-east-1a".into(),
            spot,
            instance_id: "i-1".into(),
        }
    }

    #[test]
    fn a_pod_off_a_rank_one_spot_node_fails_the_demo() {
        let facts = BTreeMap::from([
            ("spot-c7g".to_string(), facts("c7g.4xlarge", true)),
            ("spot-m7g".to_string(), facts("m7g.large", true)),
            ("od-c7g".to_string(), facts("c7g.4xlarge", false)),
        ]);
        let on = |node: &str| BTreeMap::from([("web-1".to_string(), node.to_string())]);
        let ranking = ranking(&[("us-east-1a", &["c7g.4xlarge", "m7g.large"])]);
        assert!(check_rank_one(&on("spot-c7g"), &facts, &ranking).is_ok());
        let rank_two = check_rank_one(&on("spot-m7g"), &facts, &ranking);
        assert!(
            rank_two
                .unwrap_err()
                .to_string()
                .contains("web-1 on spot-m7g")
        );
        assert!(check_rank_one(&on("od-c7g"), &facts, &ranking).is_err());
        assert!(check_rank_one(&on("unknown"), &facts, &ranking).is_err());
        assert!(check_rank_one(&BTreeMap::new(), &facts, &ranking).is_err());
    }

    #[test]
    fn the_spot_group_takes_the_type_ranked_first_in_every_zone_else_in_the_first() {
        let same = ranking(&[
            ("us-east-1a", &["c7g.4xlarge", "m7g.large"]),
            ("us-east-1b", &["c7g.4xlarge", "c7g.2xlarge"]),
        ]);
        let zones = ["us-east-1a", "us-east-1b"];
        assert_eq!(
            pick_spot_type(&same, &zones).as_deref(),
            Some("c7g.4xlarge")
        );
        let differ = ranking(&[
            ("us-east-1a", &["m7g.large", "c7g.4xlarge"]),
            ("us-east-1b", &["c7g.4xlarge", "m7g.large"]),
        ]);
        assert_eq!(
            pick_spot_type(&differ, &zones).as_deref(),
            Some("m7g.large")
        );
        assert_eq!(pick_spot_type(&ranking(&[]), &zones), None);
    }

    #[test]
    fn the_request_annotation_prints_phase_group_and_desired_capacity() {
        let alias = |n: &str| format!("<{n}>");
        let value = r#"{"phase":"requested","trigger":"rebalance","since":"2026-01-01T00:00:00Z","group":"demo-spot","from":1,"to":2}"#;
        assert_eq!(
            request_summary(value, alias),
            "requested (group demo-spot, desired 1 → 2), trigger rebalance"
        );
        let fallback = r#"{"phase":"requested","trigger":"rebalance","since":"2026-01-01T00:00:00Z","group":"demo-on-demand","fallback":true,"from":0,"to":1}"#;
        assert_eq!(
            request_summary(fallback, alias),
            "requested (on-demand fallback demo-on-demand, desired 0 → 1), trigger rebalance"
        );
        let draining = r#"{"phase":"draining","trigger":"rebalance","since":"2026-01-01T00:00:00Z","group":"demo-on-demand","fallback":true,"from":0,"to":1,"replacement":"i-1","replacementNode":"ip-1"}"#;
        assert_eq!(
            request_summary(draining, alias),
            "draining, replacement <ip-1>, trigger rebalance"
        );
        assert_eq!(
            request_summary(r#"{"phase":"wanted","trigger":"rebalance"}"#, alias),
            "wanted, trigger rebalance"
        );
        assert_eq!(request_summary("{", alias), "(unreadable)");
    }

    fn cart_with(annotations: &[(&str, &str)]) -> Deployment {
        let mut d = cart_deployment();
        let a = d.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in annotations {
            a.insert(k.to_string(), v.to_string());
        }
        d
    }

    #[test]
    fn cart_settles_in_a_state_only_once_no_fargate_rollout_is_in_flight() {
        let rolling = r#"{"labels":{"spotkube.io/fargate":"true"},"rollout":{"kind":"failover"}}"#;
        let done = r#"{"labels":{"spotkube.io/fargate":"true"}}"#;
        let moving = cart_with(&[(STATE, "fargate"), (FARGATE_RECORD, rolling)]);
        assert_eq!(state_of(&moving), Some("fargate"));
        assert!(!settled(&moving, "fargate"));
        assert!(settled(
            &cart_with(&[(STATE, "fargate"), (FARGATE_RECORD, done)]),
            "fargate"
        ));
        assert!(settled(&cart_with(&[(STATE, "spot")]), "spot"));
        assert!(!settled(&cart_with(&[(STATE, "recovering")]), "spot"));
        assert!(!settled(&cart_deployment(), "spot"));
    }

    #[test]
    fn a_single_sample_without_a_ready_endpoint_fails_the_fargate_chapter() {
        assert!(check_zero_gap(1, 300).is_ok());
        assert!(check_zero_gap(0, 300).is_err());
        assert!(check_zero_gap(1, 10).is_err(), "too few samples to say");
    }

    #[test]
    fn the_pdb_claim_needs_a_drain_before_the_termination_and_never_fewer_than_min_available() {
        assert!(check_pdb_respected(true, Some(2), 2).is_ok());
        assert!(check_pdb_respected(true, Some(3), 2).is_ok());
        let below = check_pdb_respected(true, Some(1), 2).unwrap_err();
        assert!(below.to_string().contains("fell to 1"), "{below}");
        assert!(check_pdb_respected(false, Some(3), 2).is_err());
        assert!(check_pdb_respected(true, None, 2).is_err());
    }
}
